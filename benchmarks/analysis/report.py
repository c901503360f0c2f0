"""Write the results table (markdown) and a plot from the simulator's JSON files.

.venv/bin/python -m benchmarks.analysis.report benchmarks/analysis/results-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(files: list[Path]) -> str:
    lines = [
        "| baseline errors | scenario | judge | rolled back | within 5 intervals "
        "| median intervals to rollback |",
        "|---|---|---|---|---|---|",
    ]
    for f in files:
        data = json.loads(f.read_text())
        base = data["setup"]["baseline_error"]
        for r in data["rows"]:
            med = r["median_intervals"]
            lines.append(
                f"| {100 * base:g}% | {r['scenario']} | {r['judge']} | "
                f"{100 * r['rolled_back']:.1f}% | {100 * r['within_5']:.1f}% | "
                f"{'-' if med != med else f'{med:g}'} |"
            )
    return "\n".join(lines)


def plot(files: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(files), figsize=(6 * len(files), 4), squeeze=False)
    for ax, f in zip(axes[0], files, strict=True):
        data = json.loads(f.read_text())
        for r in data["rows"]:
            hist = r["intervals_hist"] or [0]
            cum = []
            total = 0
            for h in hist:
                total += h
                cum.append(100 * total / r["rollouts"])
            style = "-" if r["judge"] == "modelpilot" else "--"
            ax.step(
                range(len(cum)), cum, style, where="post", label=f"{r['scenario']} ({r['judge']})"
            )
        ax.axvline(5, color="grey", lw=0.5)
        ax.set_title(f"baseline error rate {100 * data['setup']['baseline_error']:g}%")
        ax.set_xlabel("analysis intervals (1 min)")
        ax.set_ylabel("rolled back by then (% of rollouts)")
        ax.set_ylim(-2, 102)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    files = sorted(Path(p) for p in sys.argv[1:])
    print(table(files))
    try:
        plot(files, files[0].parent / "detection.png")
    except ImportError:
        print("(matplotlib is not installed: no plot)", file=sys.stderr)


if __name__ == "__main__":
    main()
