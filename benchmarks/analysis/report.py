"""Write the results table (markdown) and the detection plot from the simulator's JSON.

.venv/bin/python -m benchmarks.analysis.report benchmarks/analysis/results.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

PLOTTED = (
    ("canary", "A/A (1% errors)"),
    ("canary", "+0.5 pt errors"),
    ("canary", "+1 pt errors"),
    ("canary", "+20% p99"),
    ("abTest 200", "A/A (1% errors)"),
    ("abTest 200", "+1 pt errors"),
)


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _num(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:g}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rollout | scenario | judge | rolled back | failed (inconclusive) | promoted "
        "| rolled back within 5 (best) | stopped within 5 | median intervals to promotion |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['scenario']} | {r['judge']} | {_pct(r['rolled_back'])} | "
            f"{_pct(r['failed_inconclusive'])} | {_pct(r['promoted'])} | "
            f"{_pct(r['detected_within_5'])} ({_pct(r['best_within_5'])}) | "
            f"{_pct(r['stopped_within_5'])} | {_num(r['median_intervals_to_promotion'])} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    for ax, (family, scenario) in zip(axes.flat, PLOTTED, strict=True):
        best = None
        for r in rows:
            if r["family"] != family or r["scenario"] != scenario:
                continue
            best = r["best_within_5"]
            hist = r["rollback_hist"] or [0]
            cum, total = [], 0
            for h in hist:
                total += h
                cum.append(100 * total / r["rollouts"])
            style = "-" if r["judge"] == "modelpilot" else "--"
            ax.step(range(len(cum)), cum, style, where="post", label=r["judge"])
        if best is not None:
            ax.plot([5], [100 * best], "k*", ms=10, label="best achievable at 5")
        ax.axvline(5, color="grey", lw=0.5)
        ax.set_title(f"{family}: {scenario}", fontsize=10)
        ax.set_xlabel("analysis intervals (1 min)")
        ax.set_ylabel("rolled back by then (% of rollouts)")
        ax.set_ylim(-2, 102)
        ax.set_xlim(0, 40 if family == "canary" else 210)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/analysis/results.json")
    data = json.loads(path.read_text())
    print(table(data["rows"]))
    try:
        plot(data["rows"], path.parent / "detection.png")
    except ImportError:
        print("(matplotlib is not installed: no plot)", file=sys.stderr)


if __name__ == "__main__":
    main()
