"""docs/benchmarks.png from docs/benchmarks.json: four panels of the report's main figures.

Why this exists apart from render.py: it needs matplotlib, which is no dependency of the
project; `bench/report.py` runs it with the Python of a virtualenv of its own:

    CHART_PYTHON bench/compare/chart.py docs/benchmarks.json docs/benchmarks.png
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MAIN = "aq-1000"
AQ_COLOR, OTHER_COLOR = "#1f6fb2", "#9a9a9a"


def bars(ax: Any, results: dict[str, Any], name: str, title: str, keys: list[str]) -> None:
    labels, medians, lows, highs, colors = [], [], [], [], []
    for key in keys:
        values = results["figures"].get(key, {}).get(name)
        if not values:
            continue
        m = statistics.median(values)
        labels.append(key)
        medians.append(m)
        lows.append(m - min(values))
        highs.append(max(values) - m)
        colors.append(AQ_COLOR if key.startswith("aq") else OTHER_COLOR)
    y = range(len(labels))
    ax.barh(y, medians, xerr=[lows, highs], color=colors, capsize=3)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def main() -> None:
    source, target = sys.argv[1], sys.argv[2]
    with open(source) as f:
        results = json.load(f)
    keys = [s["key"] for s in results["systems"]]
    cluster = {s["key"]: s.get("cluster_of") for s in results["systems"]}  # runs on Redis Cluster
    compared = [k for k in keys if k not in ("aq-10", "aq-1xN") and not cluster.get(k)]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    bars(axes[0][0], results, "rate", "Throughput, no-op jobs (jobs/s, higher is better)", compared)
    bars(
        axes[0][1],
        results,
        "cpu_us_per_job",
        "Redis CPU per job (µs, lower is better)",
        compared,
    )
    bars(
        axes[1][0],
        results,
        "latency_p50",
        "Enqueue → start at half of peak, p50 (s, log, lower is better)",
        [k for k in compared if results["figures"].get(k, {}).get("latency_p50")],
    )
    axes[1][0].set_xscale("log")
    atomicity = [k for k in ("aq-1", "aq-10", "aq-1000", "aq-new", "aq-1xN") if k in keys]
    bars(axes[1][1], results, "rate", "AtomicQueues: cost of per-entity order (jobs/s)", atomicity)
    fig.suptitle(
        f"AtomicQueues vs other Redis job queues: {results['jobs']:,} jobs, median of "
        f"{results['repeat']} (bars: lowest–highest); blue = AtomicQueues (per-entity order)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
