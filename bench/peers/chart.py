"""Draws docs/bench.png from scripts/bench-peers' results: spans/s at saturation per
server (one core), CPU seconds per million spans at the fixed rate, and toctou's
detection latency (p50/p99)."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

doc = json.load(open(sys.argv[1]))
res = doc["results"]
names = [r["name"] for r in res]
colors = {"toctou": "#1f77b4", "toctou+clickhouse": "#4a90c2", "rotel": "#d62728", "otelcol": "#7f7f7f"}
c = [colors.get(n, "#999999") for n in names]

fig, ax = plt.subplots(1, 3, figsize=(15, 4.6))
sps = [r["spans_per_s"] / 1000 for r in res]
ax[0].bar(names, sps, color=c)
ax[0].set_title("spans/s at saturation, server on 1 core (thousands)")
for i, v in enumerate(sps):
    ax[0].text(i, v, f"{v:.0f}k", ha="center", va="bottom")

cpu = [r.get("cpu_s_per_m_spans_at_fixed") or 0 for r in res]
# The median round, with the spread of all rounds (runs before rounds have one value).
rounds = [[v for v in r.get("cpu_s_per_m_spans_at_fixed_rounds") or [m] if v] for r, m in zip(res, cpu)]
spread = [[m - min(rs or [m]) for m, rs in zip(cpu, rounds)], [max(rs or [m]) - m for m, rs in zip(cpu, rounds)]]
ax[1].bar(names, cpu, color=c, yerr=spread, capsize=4, ecolor="#333333")
n_rounds = doc["load"].get("fixed_rate_rounds", 1)
ax[1].set_title(
    f"CPU s per million spans at {doc['load']['fixed_rate_spans_per_s']:,} spans/s"
    + (f"\n(median of {n_rounds} rounds, bars: min-max)" if n_rounds > 1 else ""),
    fontsize=10,
)
for i, v in enumerate(cpu):
    ax[1].text(i, v, f"{v:.2f}", ha="center", va="bottom")

labels, p50, p99 = [], [], []
for r in res:
    if r.get("detection_ms_at_saturation", {}).get("p50") is not None:
        labels.append(f"{r['name']}\ndecided, saturation")
        p50.append(r["detection_ms_at_saturation"]["p50"] / 1000)
        p99.append(r["detection_ms_at_saturation"]["p99"] / 1000)
    lat = r.get("latency_into_clickhouse", {}).get("clickhouse_visible_ms", {})
    if lat.get("p50") is not None:
        rate = doc["load"]["latency_rate_spans_per_s"]
        labels.append(f"{r['name']}\nvisible in CH, {rate // 1000}k/s")
        p50.append(lat["p50"] / 1000)
        p99.append(lat["p99"] / 1000)
x = range(len(labels))
ax[2].bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#2ca02c")
ax[2].bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color="#ff7f0e")
ax[2].axhline(1.5, color="k", linestyle="--", linewidth=0.8, label="p99 target (CH, 1.5 s)")
ax[2].set_xticks(list(x))
ax[2].set_xticklabels(labels, fontsize=8)
ax[2].set_title("toctou detection latency (s)")
ax[2].legend(fontsize=8)
for a in ax[:2]:
    a.tick_params(axis="x", labelsize=8)
fig.suptitle(f"toctou vs Rotel vs OpenTelemetry Collector, OTLP/{doc['load']['protocol'].upper()}, "
             f"{doc['load']['connections']} connections, {doc['date']}")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
