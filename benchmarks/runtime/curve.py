"""The latency/throughput curve, batched against unbatched, side by side in one run.

    .venv/bin/python benchmarks/runtime/curve.py [--duration 2] [--rounds 3]
        [--concurrency 1,2,...,128] [--baseline REV]

One model (tiny by default), two servers started together on the server core (`run.py`'s
fixed split: server on core 1, wrk on core 0, onnxruntime with one thread): one without
batching and one with the adaptive batcher (`--max-batch-size 32 --max-batch-delay-ms 2`).
At every concurrency the two are measured one right after the other, so both see the same
neighbours; the whole sweep is repeated `--rounds` times, the ceiling measured after each,
and every cell is reported as its median over the rounds (min-max of req/s beside it).
`--baseline REV` adds a third server, batched with the same flags, from the runtime as it
was at git revision REV (for example the fixed-delay batcher before the adaptive one).
Writes curve.json and curve.png here and prints, last, the ratios the goals are read from:
batched over unbatched p50 at concurrency 1, and each side's requests per second (wall
clock, and per CPU-second of the server) over the in-process batch-1 ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (the sibling benchmark's helpers)

CONCURRENCY = [1, 2, 4, 8, 16, 32, 64, 128]
SIDES = {
    "unbatched": [],
    "batched": ["--max-batch-size", "32", "--max-batch-delay-ms", "2"],
}


def measure(
    target: bench.Target, proc: Any, protocol: str, conc: int, seconds: float, warmup: float
) -> dict[str, Any]:
    bench.load(target, protocol, conc, warmup)
    s0, c0 = bench.batch_totals(target.url, target.model)
    cpu0 = bench.cpu_seconds(proc.pid)
    result = bench.load(target, protocol, conc, seconds)
    cpu1 = bench.cpu_seconds(proc.pid)
    s1, c1 = bench.batch_totals(target.url, target.model)
    answered = s1 - s0
    result["server_cpu_us"] = 1e6 * (cpu1 - cpu0) / answered if answered else 0.0
    result["mean_batch"] = answered / (c1 - c0) if c1 > c0 else 0.0
    return result


MEDIAN_KEYS = (
    "rps", "p50_us", "p99_us", "server_cpu_us", "mean_batch", "ratio_b1", "cpu_ratio_b1",
)  # fmt: skip


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per side and concurrency: the median of each measure over the rounds, with
    the lowest and highest requests per second beside it."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["side"], r["concurrency"]), []).append(r)
    rows = []
    for (side, conc), group in cells.items():
        row: dict[str, Any] = {"side": side, "concurrency": conc, "rounds": len(group)}
        for key in MEDIAN_KEYS:
            row[key] = statistics.median(g[key] for g in group)
        row["rps_min"] = min(g["rps"] for g in group)
        row["rps_max"] = max(g["rps"] for g in group)
        rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], ceiling_rps: float, model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {
        "unbatched": ("o-", "tab:blue"),
        "batched": ("s--", "tab:orange"),
        "batched, baseline": ("^:", "tab:green"),
    }
    for side, (style, color) in styles.items():
        pts = sorted(((r["concurrency"], r) for r in rows if r["side"] == side), key=lambda p: p[0])
        if not pts:
            continue
        xs = [c for c, _ in pts]
        ax_rps.plot(xs, [r["rps"] for _, r in pts], style, color=color, label=side)
        ax_lat.plot(
            xs, [r["p50_us"] / 1000 for _, r in pts], style, color=color, label=f"{side} p50"
        )
        ax_lat.plot(
            xs,
            [r["p99_us"] / 1000 for _, r in pts],
            style,
            color=color,
            alpha=0.3,
            label=f"{side} p99",
        )
    ax_rps.axhline(0.2 * ceiling_rps, color="grey", ls=":", label="20% of in-process batch 1")
    for ax in (ax_rps, ax_lat):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (wrk connections)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_rps.set_ylabel("requests per second")
    ax_rps.set_title(f"{model}: throughput")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_title(f"{model}: latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="tiny", choices=sorted(bench.SHAPES))
    parser.add_argument("--protocol", default="http-json", choices=["http-json", "http-binary"])
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--rounds", type=int, default=3, help="measure every cell this often; report medians"
    )
    parser.add_argument("--baseline", metavar="REV", help="also the batched runtime at REV")
    parser.add_argument("--plot-only", action="store_true", help="redraw curve.png from curve.json")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads((args.out / "curve.json").read_text())
        meta = saved["meta"]
        plot(saved["rows"], meta["ceiling_b1"]["rows_per_s"], meta["model"], args.out / "curve.png")
        return

    work = Path(tempfile.mkdtemp(prefix="modelpilot-curve-"))
    sys.path.insert(0, str(bench.ROOT / "runtime-image/src"))
    from modelpilot_runtime.samples import write_repository

    repo = write_repository(work / "models", [args.model])
    bodies = bench.write_bodies(args.model, work)
    load_before = os.getloadavg()
    started = time.time()
    servers = {}
    try:
        for side, flags in SIDES.items():
            proc, url, grpc_target = bench.start_server(
                args.model, repo, flags, work / f"{side}.log"
            )
            servers[side] = (proc, bench.Target(args.model, url, grpc_target, bodies, ""))
        if args.baseline:
            proc, url, grpc_target = bench.start_server(
                args.model,
                repo,
                SIDES["batched"],
                work / "baseline.log",
                src=bench.baseline_sources(args.baseline, work),
            )
            servers["batched, baseline"] = (
                proc,
                bench.Target(args.model, url, grpc_target, bodies, ""),
            )
        model_file = repo / args.model / "1" / "model.onnx"
        runs: list[dict[str, Any]] = []
        ceilings: list[dict[str, float]] = []
        for round_ in range(args.rounds):
            for conc in map(int, args.concurrency.split(",")):
                for side, (proc, target) in servers.items():
                    result = measure(target, proc, args.protocol, conc, args.duration, args.warmup)
                    row = {"round": round_, "side": side, "concurrency": conc, **result}
                    runs.append(row)
                    print(json.dumps(row), flush=True)
            # The ceiling once per round, so each round's ratios share its neighbours.
            b1_round = bench.ceiling(model_file, bench.SHAPES[args.model], [1])[1]
            ceilings.append(b1_round)
            for r in runs:
                if r["round"] == round_:
                    r["ratio_b1"] = r["rps"] / b1_round["rows_per_s"]
                    per_cpu = 1e6 / r["server_cpu_us"] if r["server_cpu_us"] else 0.0
                    r["cpu_ratio_b1"] = per_cpu / b1_round["rows_per_cpu_s"]
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    load_after = os.getloadavg()
    rows = medians(runs)
    b1 = {k: statistics.median(c[k] for c in ceilings) for k in ceilings[0]}
    meta = {
        "command": "benchmarks/runtime/curve.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "cores": f"server on core {bench.SERVER_CORE}, wrk on core {bench.CLIENT_CORE}",
        "model": args.model,
        "protocol": args.protocol,
        "batched_flags": SIDES["batched"],
        "baseline": args.baseline,
        "rounds": args.rounds,
        "ceiling_b1": b1,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "runs": runs, "ceilings": ceilings}, indent=1)
    )
    plot(rows, b1["rows_per_s"], args.model, args.out / "curve.png")

    print()
    print(f"{meta['date']}; load average {meta['load_before']} before, {meta['load_after']} after")
    print(f"medians over {args.rounds} rounds (every cell measured once per round, in turn)")
    print(
        "| side | conc | req/s | req/s min-max | p50 ms | p99 ms | mean batch "
        "| server CPU µs/req | vs b1 | per CPU-s vs b1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['side']} | {r['concurrency']} | {r['rps']:,.0f} | "
            f"{r['rps_min']:,.0f}-{r['rps_max']:,.0f} | {r['p50_us'] / 1000:.3f} | "
            f"{r['p99_us'] / 1000:.3f} | {r['mean_batch']:.1f} | {r['server_cpu_us']:.1f} | "
            f"{100 * r['ratio_b1']:.1f}% | {100 * r['cpu_ratio_b1']:.1f}% |"
        )
    by = {(r["side"], r["concurrency"]): r for r in rows}
    print()
    print(
        f"in-process batch-1 ceiling: {b1['rows_per_s']:,.0f} rows/s, "
        f"{b1['rows_per_cpu_s']:,.0f} rows per CPU-second, p50 {b1['p50_us']:.1f} µs"
    )
    for side in ("batched", "batched, baseline"):
        if (side, 1) in by and ("unbatched", 1) in by:
            ratio = by[side, 1]["p50_us"] / by["unbatched", 1]["p50_us"]
            print(f"c=1 p50, {side} / unbatched: {ratio:.2f} (goal <= 1.2)")
    for side in servers:
        top = max(r["concurrency"] for r in rows)
        r = by.get((side, 64)) or by[side, top]
        print(
            f"c={r['concurrency']} {side}: {100 * r['ratio_b1']:.1f}% of in-process batch-1 "
            f"rows/s ({100 * r['cpu_ratio_b1']:.1f}% per CPU-second)"
        )


if __name__ == "__main__":
    main()
