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
ap.add_argument("--rate", type=int, required=True)
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
    ("broker produce, Kafka ProducerPerformance (rec/s)", lambda r: r["kafka_produce"], "{:,.0f}"),
    ("broker consume, Kafka ConsumerPerformance (rec/s)", lambda r: r["kafka_consume"], "{:,.0f}"),
    ("broker produce, Python client (msg/s)", lambda r: r["broker_produce"], "{:,.0f}"),
    ("broker consume, Python client (msg/s)", lambda r: r["broker_consume"], "{:,.0f}"),
    (f"steady {a.rate} rows/s x {a.secs}s: p50 (ms)", lambda r: r["p50_ms"], "{:.1f}"),
    (f"steady {a.rate} rows/s x {a.secs}s: p95 (ms)", lambda r: r["p95_ms"], "{:.1f}"),
    (f"steady {a.rate} rows/s x {a.secs}s: p99 (ms)", lambda r: r["p99_ms"], "{:.1f}"),
    (f"peak RSS, {a.rss_rows}-row transaction (MiB)", lambda r: r["rss_mib"], "{:.1f}"),
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
    ("backfill end to end", "≥ 0.33 × COPY | COPY", ratio("backfill_target_s", "copy_s"), (">=", 0.33)),
    (f"steady {a.rate} rows/s, p99 (ms)", "≤ 25 ms", lambda r: r["p99_ms"], ("<=", 25.0)),
    (f"peak RSS, {a.rss_rows}-row txn (MiB)", "≤ 64 MiB", lambda r: r["rss_mib"], ("<=", 64.0)),
]
not_measured = [
    ("cutover vs Debezium, catch-up end to end", "≥ 5 × Debezium", "no Debezium peer in the bench yet"),
    ("steady 20k rows/s for 60 s, p99", "≤ 100 ms", "stage not built yet"),
    ("peak RSS, 10M-row transaction", "within +10 % of 1M", "stage not built yet"),
    ("500 tables in the publication", "≥ 0.8 × 1 table", "stage not built yet"),
    ("CPU seconds per million rows", "reported beside native", "stage not built yet"),
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
    met = s["median"] >= th if op == ">=" else s["median"] <= th
    fmt = "{:.2f}" if op == ">=" else "{:.1f}"
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
