#!/usr/bin/env python3
"""make bench's report: per-run raw figures (run-*.json, seconds and counts as bench.sh measured
them) -> the stage table and the targets table, each figure the median of the runs with its
min-max, written as text and JSON. Ratios are computed per run (both sides measured in the same
run) and then summarised, never from medians of different runs."""
import argparse
import json
import statistics
import sys
from datetime import datetime, timezone

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, required=True)
ap.add_argument("--rates", required=True, help="steady-state rates, rows/s, space separated")
ap.add_argument("--tables", type=int, required=True)
ap.add_argument("--scale-rows", required=True)
ap.add_argument("--rss-big-rows", required=True)
ap.add_argument("--secs", type=int, required=True)
ap.add_argument("--rss-rows", type=int, required=True)
ap.add_argument("--machine", required=True)
ap.add_argument("--binary", required=True)
ap.add_argument("--txt", required=True)
ap.add_argument("--json", required=True)
ap.add_argument("runs", nargs="+")
a = ap.parse_args()
runs = [json.load(open(p)) for p in sorted(a.runs)]
N = a.rows
RATES = [int(x) for x in a.rates.split()]
SCALE = [int(x) for x in a.scale_rows.split()]
BIG = [int(x) for x in a.rss_big_rows.split()]


def per_run(f):
    out = []
    for r in runs:
        try:
            out.append(f(r))
        except (KeyError, ZeroDivisionError):
            pass
    return out


def summary(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def rate(key):
    return lambda r: N / r[key]


stages = [  # (name, function of one run, format)
    ("native logical replication, 1-row txns (rows/s)", rate("native_s_1"), "{:,.0f}"),
    ("native logical replication, 100-row txns (rows/s)", rate("native_s_100"), "{:,.0f}"),
    ("cutover capture + mirror sink, 1-row (rows/s)", rate("cutover_s_1"), "{:,.0f}"),
    ("cutover capture + mirror sink, 100-row (rows/s)", rate("cutover_s_100"), "{:,.0f}"),
    ("apply only, from the topic, 1-row (rows/s)", rate("apply_s_1"), "{:,.0f}"),
    ("apply only, from the topic, 100-row (rows/s)", rate("apply_s_100"), "{:,.0f}"),
    ("capture only, broker-acked, 1-row (rows/s)", rate("capture_s_1"), "{:,.0f}"),
    ("capture only, broker-acked, 100-row (rows/s)", rate("capture_s_100"), "{:,.0f}"),
    ("Debezium PG connector + JDBC sink, 1-row (rows/s)", rate("dbz_s_1"), "{:,.0f}"),
    ("Debezium PG connector + JDBC sink, 100-row (rows/s)", rate("dbz_s_100"), "{:,.0f}"),
    ("CPU s per 1M rows: native walsender + apply, 1-row", lambda r: r["native_cpu_1"] * 1e6 / N, "{:.1f}"),
    ("CPU s per 1M rows: native walsender + apply, 100-row", lambda r: r["native_cpu_100"] * 1e6 / N, "{:.1f}"),
    ("CPU s per 1M rows: cutover run (capture+sink), 1-row", lambda r: r["cutover_cpu_1"] * 1e6 / N, "{:.1f}"),
    ("CPU s per 1M rows: cutover run (capture+sink), 100-row", lambda r: r["cutover_cpu_100"] * 1e6 / N, "{:.1f}"),
    ("CPU s per 1M rows: cutover capture only, 1-row", lambda r: r["capture_cpu_1"] * 1e6 / N, "{:.1f}"),
    ("CPU s per 1M rows: cutover capture only, 100-row", lambda r: r["capture_cpu_100"] * 1e6 / N, "{:.1f}"),
    ("CPU s per 1M rows: cutover sink (apply only), 1-row", lambda r: r["apply_cpu_1"] * 1e6 / N, "{:.1f}"),
    ("CPU s per 1M rows: cutover sink (apply only), 100-row", lambda r: r["apply_cpu_100"] * 1e6 / N, "{:.1f}"),
    ("CPU s per 1M rows: Debezium Connect JVM, 1-row", lambda r: r["dbz_cpu_1"] * 1e6 / N, "{:.1f}"),
    ("CPU s per 1M rows: Debezium Connect JVM, 100-row", lambda r: r["dbz_cpu_100"] * 1e6 / N, "{:.1f}"),
    ("broker produce, Kafka ProducerPerformance (rec/s)", lambda r: r["kafka_produce"], "{:,.0f}"),
    ("broker consume, Kafka ConsumerPerformance (rec/s)", lambda r: r["kafka_consume"], "{:,.0f}"),
    ("broker produce, Python client (msg/s)", lambda r: r["broker_produce"], "{:,.0f}"),
    ("broker consume, Python client (msg/s)", lambda r: r["broker_consume"], "{:,.0f}"),
    *[row for rt in RATES for row in (
        (f"steady {rt} rows/s x {a.secs}s: committed rate reached (rows/s)", lambda r, rt=rt: r[f"steady_rate_{rt}"], "{:,.0f}"),
        (f"steady {rt} rows/s x {a.secs}s: p50 (ms)", lambda r, rt=rt: r[f"p50_ms_{rt}"], "{:.1f}"),
        (f"steady {rt} rows/s x {a.secs}s: p95 (ms)", lambda r, rt=rt: r[f"p95_ms_{rt}"], "{:.1f}"),
        (f"steady {rt} rows/s x {a.secs}s: p99 (ms)", lambda r, rt=rt: r[f"p99_ms_{rt}"], "{:.1f}"),
    )],
    (f"peak RSS, {a.rss_rows}-row transaction (MiB)", lambda r: r["rss_mib"], "{:.1f}"),
    *[(f"peak RSS, {n}-row transaction (MiB, first run)", lambda r, n=n: r[f"rss_mib_{n}"], "{:.1f}") for n in BIG],
    (f"{a.tables} tables, 1-row txns, end to end (rows/s)", rate("tables_s"), "{:,.0f}"),
    (f"{a.tables} tables: first row applied after start (s)", lambda r: r["tables_first_s"], "{:.1f}"),
    (f"{a.tables} tables: rows that never arrived (must be 0)", lambda r: r["tables_lost"], "{:,.0f}"),
    *[(f"scaling: catch-up of {n} rows, end to end (rows/s, first run)", lambda r, n=n: n / r[f"scale_s_{n}"], "{:,.0f}") for n in SCALE],
    ("backfill into the topic (rows/s)", rate("backfill_topic_s"), "{:,.0f}"),
    ("backfill end to end, into the target (rows/s)", rate("backfill_target_s"), "{:,.0f}"),
    ("COPY TO STDOUT | COPY FROM STDIN (rows/s)", rate("copy_s"), "{:,.0f}"),
]

# (figure, target text, measured text fn, ratio fn or None, goal: (">=" | "<=", threshold), value fn)
def ratio(num, den):
    return lambda r: r[den] / r[num]  # both are seconds for the same rows: rate ratio = den/num


targets = [
    ("catch-up end to end, 1-row txns", "≥ 1.0 × native", ratio("cutover_s_1", "native_s_1"), (">=", 1.0)),
    ("catch-up end to end, 100-row txns", "≥ 1.0 × native", ratio("cutover_s_100", "native_s_100"), (">=", 1.0)),
    ("apply only, 1-row txns", "≥ 2.0 × native", ratio("apply_s_1", "native_s_1"), (">=", 2.0)),
    ("apply only, 100-row txns", "≥ 2.0 × native", ratio("apply_s_100", "native_s_100"), (">=", 2.0)),
    ("capture only, 1-row txns", "≥ 1.5 × native", ratio("capture_s_1", "native_s_1"), (">=", 1.5)),
    ("capture only, 100-row txns", "≥ 1.5 × native", ratio("capture_s_100", "native_s_100"), (">=", 1.5)),
    ("cutover vs Debezium, catch-up, 1-row", "≥ 5 × Debezium", ratio("cutover_s_1", "dbz_s_1"), (">=", 5.0)),
    ("cutover vs Debezium, catch-up, 100-row", "≥ 5 × Debezium", ratio("cutover_s_100", "dbz_s_100"), (">=", 5.0)),
    ("backfill end to end", "≥ 0.33 × COPY | COPY", ratio("backfill_target_s", "copy_s"), (">=", 0.33)),
    *[(f"steady {rt} rows/s, p99 (ms)", f"≤ {25 if rt <= 2000 else 100} ms", lambda r, rt=rt: r[f"p99_ms_{rt}"],
       ("<=", 25.0 if rt <= 2000 else 100.0)) for rt in RATES],
    (f"peak RSS, {a.rss_rows}-row txn (MiB)", "≤ 64 MiB", lambda r: r["rss_mib"], ("<=", 64.0)),
    *[(f"peak RSS, {n}-row txn vs {a.rss_rows}", "≤ 1.10 × (flat)", lambda r, n=n: r[f"rss_mib_{n}"] / r["rss_mib"], ("<=", 1.10))
      for n in BIG],
    (f"{a.tables} tables vs 1 table, catch-up", "≥ 0.8 × 1 table", ratio("tables_s", "cutover_s_1"), (">=", 0.8)),
    (f"{a.tables} tables: first row applied (s)", "≤ 30 s", lambda r: r["tables_first_s"], ("<=", 30.0)),
    ("rows lost (the many-tables stage counts)", "0 in every run", lambda r: r["tables_lost"], ("max<=", 0.0)),
    *[(f"catch-up rows/s, {SCALE[-1]} vs {SCALE[0]} backlog", "≥ 0.9 × (linear)",
       lambda r: (SCALE[-1] / r[f"scale_s_{SCALE[-1]}"]) / (SCALE[0] / r[f"scale_s_{SCALE[0]}"]), (">=", 0.9))
      for _ in ([1] if len(SCALE) > 1 else [])],
]
not_measured = [  # (figure, goal, why): every issue-14 figure is measured now
]

now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
lines = [f"cutover bench {now} — {N} rows, {a.machine}, {len(runs)} run(s): median [min–max]",
         f"binary {a.binary}", ""]
out = {"rows": N, "machine": a.machine, "binary": a.binary, "runs": len(runs), "stages": {}, "targets": [], "raw": runs}
lines.append(f"{'stage':<52} {'median':>10}  min–max")
for name, f, fmt in stages:
    s = summary(per_run(f))
    out["stages"][name] = s
    if s is None:
        lines.append(f"{name:<52} {'—':>10}")
        continue
    lines.append(f"{name:<52} {fmt.format(s['median']):>10}  {fmt.format(s['min'])}–{fmt.format(s['max'])}")
lines += ["", f"{'target (issue 14)':<40} {'goal':<22} {'measured':>10}  {'min–max':<15} verdict"]
for name, goal, f, (op, th) in targets:
    s = summary(per_run(f))
    if s is None:
        lines.append(f"{name:<40} {goal:<22} {'—':>10}  {'':<15} not measured")
        out["targets"].append({"figure": name, "target": goal, "measured": None, "verdict": "not measured"})
        continue
    # "max<=": a figure that must hold in every run (a lost row), not only in the median one.
    met = s["max"] <= th if op == "max<=" else s["median"] >= th if op == ">=" else s["median"] <= th
    fmt = "{:.2f}" if th < 10 else "{:.1f}"
    verdict = "met" if met else "missed"
    lines.append(f"{name:<40} {goal:<22} {fmt.format(s['median']):>10}  {fmt.format(s['min'])}–{fmt.format(s['max']):<10} {verdict}")
    out["targets"].append({"figure": name, "target": goal, "measured": s, "verdict": verdict})
for name, goal, why in not_measured:
    lines.append(f"{name:<40} {goal:<22} {'—':>10}  {'':<15} not measured: {why}")
    out["targets"].append({"figure": name, "target": goal, "measured": None, "verdict": f"not measured: {why}"})
text = "\n".join(lines) + "\n"
sys.stdout.write("\n" + text)
open(a.txt, "w").write(text)
json.dump(out, open(a.json, "w"), indent=2)
print("results:", a.txt, a.json)
