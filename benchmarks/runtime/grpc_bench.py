"""gRPC against the baseline, side by side in one run: the issue-16 gRPC goals.

    benchmarks/runtime/install.sh        # wrk, ghz, grpcload
    .venv/bin/python benchmarks/runtime/grpc_bench.py [--rounds 3] [--duration 2] [--baseline main]

The tiny model, `run.py`'s fixed split (servers on core 1, the load generators on core 0,
onnxruntime with one thread), one gRPC client driving every side with the same flags:
grpcload (benchmarks/runtime/grpcload, a request serialized once, one connection) by
default, ghz with `--client ghz` (which spends more CPU per call than the server does).
Sides: this tree's runtime with its own gRPC transport (`native`, opt-in) and with grpc.aio
(`grpcio`, the default), and the runtime at git revision `--baseline` (grpc.aio, as it was).
Each side runs two servers: unbatched (for the latency at concurrency 1) and batched
(`--max-batch-size 32 --max-batch-delay-ms 2`, for the throughput at concurrency 64); HTTP
with the binary tensor extension is measured on the same servers with wrk, for reference.
Every round measures every cell one right after the other, so all sides see the same
neighbours; the rounds are repeated and each cell is reported as the median with its range.
Printed last: the gRPC p50 added over a bare `session.run` at concurrency 1 (goal <= 250 µs)
and batched gRPC over HTTP binary requests per second at concurrency 64 (goal >= 0.8), per
side. Writes grpc.json here (grpc-realtime.json with `--realtime`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (the sibling benchmark's helpers)

BATCHED = ["--max-batch-size", "32", "--max-batch-delay-ms", "2"]


def start(
    src: Path | None, model: str, repo: Path, flags: list[str], log: Path
) -> tuple[subprocess.Popen[bytes], bench.Target]:
    """A runtime server on the server core: this tree's (src None) or the sources in src."""
    proc, url, grpc_target = bench.start_server(model, repo, flags, log, src=src)
    return proc, bench.Target(model, url, grpc_target, {}, "")


def measure(
    proc: Any, target: bench.Target, protocol: str, conc: int, seconds: float, warmup: float
) -> dict[str, Any]:
    bench.load(target, protocol, conc, warmup)
    cpu0 = bench.cpu_seconds(proc.pid)
    s0, c0 = bench.batch_totals(target.url, target.model)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = bench.load(target, protocol, conc, seconds)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1, c1 = bench.batch_totals(target.url, target.model)
    cpu1 = bench.cpu_seconds(proc.pid)
    answered = s1 - s0
    result["server_cpu_us"] = 1e6 * (cpu1 - cpu0) / answered if answered else 0.0
    # The load generator's own CPU (the gRPC client or wrk, on the client core) per request.
    client = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    result["client_cpu_us"] = 1e6 * client / answered if answered else 0.0
    result["mean_batch"] = answered / (c1 - c0) if c1 > c0 else 0.0
    result.pop("error_kinds", None)
    return result


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--baseline", metavar="REV", default="main")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--realtime", action="store_true", help="servers, clients and ceiling under SCHED_FIFO"
    )
    parser.add_argument(
        "--client",
        choices=["grpcload", "ghz"],
        default="grpcload",
        help="the gRPC load generator: grpcload (lean: a request serialized once, responses "
        "left unparsed) or ghz (a request built from its template and a response decoded on "
        "every call)",
    )
    args = parser.parse_args()
    if args.realtime:
        bench.PRIORITY[:] = ["chrt", "-f", "10"]
    ghz = shutil.which(args.client) or str(Path.home() / ".cache/modelpilot/bin" / args.client)
    if not Path(ghz).exists():
        raise SystemExit(f"{args.client} not found: run benchmarks/runtime/install.sh")

    work = Path(tempfile.mkdtemp(prefix="modelpilot-grpc-"))
    sys.path.insert(0, str(bench.ROOT / "runtime-image/src"))
    from modelpilot_runtime.samples import write_repository

    model = "tiny"
    repo = write_repository(work / "models", [model])
    bodies = bench.write_bodies(model, work)
    base_src = bench.baseline_sources(args.baseline, work)
    rev = subprocess.run(
        ["git", "-C", str(bench.ROOT), "rev-parse", "--short", args.baseline],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    sides: dict[str, tuple[Path | None, list[str]]] = {
        "native": (None, ["--grpc-server", "native"]),
        "grpcio": (None, ["--grpc-server", "grpcio"]),
        f"baseline {rev}": (base_src, []),
    }
    started = time.time()
    servers: dict[tuple[str, str], tuple[Any, bench.Target]] = {}
    rows: list[dict[str, Any]] = []
    loads: list[list[float]] = []
    try:
        for side, (src, flags) in sides.items():
            for mode, extra in (("unbatched", []), ("batched", BATCHED)):
                proc, target = start(
                    src, model, repo, [*flags, *extra], work / f"{side}-{mode}.log"
                )
                target.bodies, target.ghz = bodies, ghz
                servers[side, mode] = (proc, target)
        for rnd in range(args.rounds):
            loads.append([round(x, 2) for x in os.getloadavg()])
            cells = [
                (side, "unbatched", proto, 1) for side in sides for proto in ("grpc", "http-binary")
            ]
            cells += [
                (side, "batched", proto, 64) for side in sides for proto in ("grpc", "http-binary")
            ]
            for side, mode, proto, conc in cells:
                proc, target = servers[side, mode]
                result = measure(proc, target, proto, conc, args.duration, args.warmup)
                row = {"round": rnd, "side": side, "mode": mode, "protocol": proto,
                       "concurrency": conc, **result}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
        loads.append([round(x, 2) for x in os.getloadavg()])
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    b1 = bench.ceiling(repo / model / "1" / "model.onnx", bench.SHAPES[model], [1])[1]
    meta = {
        "command": "benchmarks/runtime/grpc_bench.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "baseline": f"{args.baseline} ({rev})",
        "load_per_round": loads,
        "realtime": args.realtime,
        "cores": f"servers on core {bench.SERVER_CORE}, clients on core {bench.CLIENT_CORE}",
        "grpc_client": args.client,
        "ceiling_b1": b1,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "grpc-realtime.json" if args.realtime else "grpc.json"
    (args.out / name).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    def cells(side: str, mode: str, proto: str, key: str) -> list[float]:
        return [
            r[key] for r in rows if (r["side"], r["mode"], r["protocol"]) == (side, mode, proto)
        ]

    print()
    print(f"{meta['date']}; load average per round {loads}; baseline {meta['baseline']}")
    print(f"in-process batch-1 p50 {b1['p50_us']:.1f} µs, {b1['rows_per_s']:,.0f} rows/s")
    print(
        "| side | cell | req/s | p50 µs | p99 µs | server CPU µs/req | client CPU µs/req "
        "| mean batch |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for side in sides:
        for mode, proto, conc in (
            ("unbatched", "grpc", 1),
            ("unbatched", "http-binary", 1),
            ("batched", "grpc", 64),
            ("batched", "http-binary", 64),
        ):
            print(
                f"| {side} | {proto}, {mode}, c={conc} | {spread(cells(side, mode, proto, 'rps'))} "
                f"| {spread(cells(side, mode, proto, 'p50_us'))} "
                f"| {spread(cells(side, mode, proto, 'p99_us'))} "
                f"| {spread(cells(side, mode, proto, 'server_cpu_us'))} "
                f"| {spread(cells(side, mode, proto, 'client_cpu_us'))} "
                f"| {statistics.median(cells(side, mode, proto, 'mean_batch')):.1f} |"
            )
    print()
    for side in sides:
        added = [p - b1["p50_us"] for p in cells(side, "unbatched", "grpc", "p50_us")]
        http_added = [p - b1["p50_us"] for p in cells(side, "unbatched", "http-binary", "p50_us")]
        grpc_rps = cells(side, "batched", "grpc", "rps")
        http_rps = cells(side, "batched", "http-binary", "rps")
        ratios = [g / h for g, h in zip(grpc_rps, http_rps, strict=True) if h]
        grpc_cpu = cells(side, "batched", "grpc", "server_cpu_us")
        http_cpu = cells(side, "batched", "http-binary", "server_cpu_us")
        cpu_ratios = [h / g for g, h in zip(grpc_cpu, http_cpu, strict=True) if g]
        print(
            f"{side}: gRPC c=1 added p50 {spread(added)} µs (goal <= 250; HTTP binary "
            f"{spread(http_added)} µs); batched c=64 gRPC / "
            f"HTTP binary req/s {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}; goal >= 0.8), per CPU-second "
            f"{statistics.median(cpu_ratios):.2f}"
        )
    for side in sides:
        if side == "native":
            continue
        for mode, proto, key in (
            ("unbatched", "grpc", "p50_us"),
            ("unbatched", "grpc", "server_cpu_us"),
            ("batched", "grpc", "rps"),
            ("batched", "grpc", "server_cpu_us"),
        ):
            ours = statistics.median(cells("native", mode, proto, key))
            theirs = statistics.median(cells(side, mode, proto, key))
            print(f"native / {side}, gRPC {mode} {key}: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
