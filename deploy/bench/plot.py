#!/usr/bin/env python3
"""make bench's plots of the steady-state stages: a latency histogram (source commit -> applied
in the target, one series per rate) and throughput over time (rows committed on legacy and rows
applied on the target per second, with the p99 latency of each second), from the per-row CSV
files bench.sh exports (steady-<rate>.csv: created_at epoch, applied_at epoch, latency ms).

    plot.py OUT_DIR steady-2000.csv steady-20000.csv ...
writes OUT_DIR/steady-latency.png and OUT_DIR/steady-throughput.png."""
import csv
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display on a bench machine
import matplotlib.pyplot as plt  # noqa: E402

out, files = sys.argv[1], sys.argv[2:]
series = []
for path in files:
    rate = os.path.basename(path).removeprefix("steady-").removesuffix(".csv")
    rows = [(float(c), float(a), float(ms)) for c, a, ms in csv.reader(open(path))]
    if rows:
        series.append((int(rate), rows))
series.sort()
if not series:
    sys.exit("plot.py: no steady-state rows to plot")


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(math.ceil(q * len(sorted_values))) - 1)]


fig, ax = plt.subplots(figsize=(9, 5))
lo = max(0.1, min(min(ms for _, _, ms in rows) for _, rows in series))
hi = max(max(ms for _, _, ms in rows) for _, rows in series)
bins = [lo * (hi / lo) ** (i / 80) for i in range(81)]
for rate, rows in series:
    lat = sorted(ms for _, _, ms in rows)
    ax.hist(lat, bins=bins, histtype="step", linewidth=1.5,
            label=f"{rate:,} rows/s: p50 {pct(lat, .5):.1f} ms, p99 {pct(lat, .99):.1f} ms, max {lat[-1]:.0f} ms")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("source commit → applied in the target (ms, log)")
ax.set_ylabel("rows (log)")
ax.set_title("cutover steady state: latency histogram")
ax.legend(fontsize=8)
ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(os.path.join(out, "steady-latency.png"), dpi=110)

fig, axes = plt.subplots(len(series), 1, figsize=(9, 3.2 * len(series)), squeeze=False)
for ax, (rate, rows) in zip(axes[:, 0], series):
    t0 = min(c for c, _, _ in rows)
    secs = int(max(max(c, a) for c, a, _ in rows) - t0) + 1
    committed, applied, lat = [0] * secs, [0] * secs, [[] for _ in range(secs)]
    for c, a, ms in rows:
        committed[int(c - t0)] += 1
        applied[int(a - t0)] += 1
        lat[int(c - t0)].append(ms)
    xs = list(range(secs))
    ax.plot(xs, committed, label="committed on legacy (rows/s)", linewidth=1)
    ax.plot(xs, applied, label="applied on the target (rows/s)", linewidth=1)
    ax.set_ylabel("rows/s")
    ax.set_title(f"steady {rate:,} rows/s", fontsize=10)
    ax2 = ax.twinx()
    ax2.plot(xs, [pct(sorted(v), .99) if v else float("nan") for v in lat], color="tab:red", alpha=0.6,
             linewidth=1, label="p99 latency of rows committed that second (ms)")
    ax2.set_ylabel("p99 ms")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower center")
    ax.grid(True, alpha=0.3)
axes[-1, 0].set_xlabel("seconds since the first commit")
fig.tight_layout()
fig.savefig(os.path.join(out, "steady-throughput.png"), dpi=110)
print("plots:", os.path.join(out, "steady-latency.png"), os.path.join(out, "steady-throughput.png"))
