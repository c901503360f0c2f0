"""Before/after chart of the operator benchmark: the results-*.json files side by side.

.venv/bin/python benchmarks/operator/compare.py     # writes compare.png beside it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = (
    ("burst", "burst\n300 at once"),
    ("paced", "paced\n300 at 2/s"),
    ("pods", "pods start\n20 at 2/s"),
)


def load(name: str) -> dict[str, object] | None:
    path = HERE / f"results-{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (
        ("create → children applied, p50 (s)", lambda r: r["children_applied"]["p50_s"]),
        ("create → children applied, p99 (s)", lambda r: r["children_applied"]["p99_s"]),
        ("restart → all converged (s)", lambda r: r["restart"]["all_v2_updated_s"]),
        ("operator RSS after restart (MiB)", lambda r: r["rss_mib_after_restart"]),
    )
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 4))
    for ax, (title, get) in zip(axes, metrics, strict=True):
        labels, before, after = [], [], []
        for run, label in RUNS:
            b, a = load(f"{run}-before"), load(run)
            if a is None:
                continue
            labels.append(label)
            before.append(get(b) if b is not None else 0.0)  # type: ignore[arg-type]
            after.append(get(a))  # type: ignore[arg-type]
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], before, 0.4, label="timers + LISTs (before)")
        ax.bar([x + 0.2 for x in xs], after, 0.4, label="work queue + watch caches")
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Operator benchmark, same machine, same harness (benchmarks/operator/run.py)")
    fig.tight_layout()
    fig.savefig(HERE / "compare.png", dpi=100)
    print(f"wrote {HERE / 'compare.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
