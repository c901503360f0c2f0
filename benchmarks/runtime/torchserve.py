"""The TorchServe backend next to the ONNX backend, on the same network and weights.

    runtime-image/torchserve/install.sh .venv/bin/python && benchmarks/runtime/install.sh
    .venv/bin/python benchmarks/runtime/torchserve.py [--duration 5] [--repeat 3]
        [--baseline main] [--split-rows] [--write]

The sample `.mar` (`tiny_ts`: 8 -> 16 -> 3, softmax) and its `torch.onnx.export` (`tiny_onnx`)
are served by `modelpilot-runtime` with the same batching (up to 32 rows, 2 ms delay). Each
server's whole process tree (for TorchServe: the runtime, Java and the Python worker) is
pinned to one core and wrk to the other, as in `run.py`; HTTP JSON (v2 infer) at concurrency
1 and 32, after a warm-up of each server (`--server-warmup`). All servers run at once (the
idle ones cost nothing) and are measured in turn, each repeat going through every
concurrency and every server, so that the ratios compare numbers taken a few seconds apart
on this shared machine.

`--baseline REV` adds the TorchServe model served by the runtime as it was at git revision
REV (its sources extracted with git archive, run by this interpreter; same `.mar`).
`--split-rows` adds this tree's runtime with each row sent as a TorchServe request of its
own and batched by TorchServe's aggregator (`MODELPILOT_TORCHSERVE_SPLIT_ROWS=1`), against
one request per batch. Prints a Markdown section; `--write` also writes it to
`torchserve-results.md` and `torchserve.json` and replaces (or appends) its section in
RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (the runtime benchmark's helpers, beside this file)

from modelpilot_runtime.backends.torchserve.sample import write_mar  # noqa: E402

BATCH, DELAY_MS = 32, 2.0
CONCURRENCY = [1, 32]
SECTION = "## TorchServe backend vs ONNX backend"
ONNX, TS, SPLIT = "onnx", "torchserve", "torchserve, rows batched by TorchServe"


def start(
    model: str, repo: Path, log: Path, env: dict[str, str] | None = None, src: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A runtime serving `model`, pinned like `run.py`'s; from the sources at `src` if given."""
    proc, url, _ = bench.start_server(model, repo, [], log, src=src, env=env, ready_within=180)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and all of its descendants now alive."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def cell(
    pid: int, url: str, model: str, body: Path, c: int, duration: float, warmup: float
) -> dict[str, Any]:
    infer = f"{url}/v2/models/{model}/infer"
    bench.run_wrk(infer, body, "Content-Type: application/json", c, warmup)
    before = bench.batch_totals(url, model)
    cpu_before = tree_cpu_seconds(pid)
    result = bench.run_wrk(infer, body, "Content-Type: application/json", c, duration)
    cpu = tree_cpu_seconds(pid) - cpu_before
    after = bench.batch_totals(url, model)
    batches = after[1] - before[1]
    answered = result["rps"] * duration
    return {
        **result,
        "batch": (after[0] - before[0]) / batches if batches else 0.0,
        # The server tree's CPU per answered request: what a core of its own would give,
        # far less dependent on the neighbours than requests/s.
        "cpu_us": 1e6 * cpu / answered if answered else 0.0,
    }


def measure(args: argparse.Namespace, repo: Path, work: Path) -> list[dict[str, Any]]:
    body = bench.write_bodies("tiny", work)["http-json"]
    sides: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}
    rows: list[dict[str, Any]] = []
    try:
        proc, url = start("tiny_onnx", repo, work / "onnx.log")
        sides[ONNX] = (proc, url, "tiny_onnx")
        if args.baseline:
            src = bench.baseline_sources(args.baseline, work)
            proc, url = start("tiny_ts", repo, work / "baseline.log", src=src)
            sides[f"{TS}, {args.baseline}"] = (proc, url, "tiny_ts")
        proc, url = start("tiny_ts", repo, work / "ts.log")
        sides[TS] = (proc, url, "tiny_ts")
        if args.split_rows:
            env = {"MODELPILOT_TORCHSERVE_SPLIT_ROWS": "1"}
            proc, url = start("tiny_ts", repo, work / "split.log", env=env)
            sides[SPLIT] = (proc, url, "tiny_ts")
        # Each server's first seconds under load are its slowest (TorchServe's Java frontend
        # compiles its hot paths then); every server gets the same warm-up before the cells.
        for _, url, model in sides.values():
            infer = f"{url}/v2/models/{model}/infer"
            bench.run_wrk(infer, body, "Content-Type: application/json", 32, args.server_warmup)
        for repeat in range(args.repeat):
            for c in CONCURRENCY:
                for side, (proc, url, model) in sides.items():
                    load = os.getloadavg()[0]
                    result = cell(proc.pid, url, model, body, c, args.duration, args.warmup)
                    row = {"repeat": repeat, "side": side, "concurrency": c, "load": load}
                    rows.append({**row, **result})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        for proc, _, _ in sides.values():
            stop(proc)
    return rows


def _spread(values: list[float], fmt: str) -> str:
    mid = statistics.median(values)
    if len(values) == 1:
        return format(mid, fmt)
    return f"{format(mid, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    sides = list(dict.fromkeys(r["side"] for r in rows))
    repeats = sorted({r["repeat"] for r in rows})
    by = {(r["side"], r["concurrency"], r["repeat"]): r for r in rows}
    loads = [r["load"] for r in rows]
    lines = [
        SECTION,
        "",
        f"The sample network (8 -> 16 -> 3, softmax) as a TorchServe `.mar` and as its ONNX "
        f"export, served by `modelpilot-runtime` over HTTP JSON (v2 infer) with batching up to "
        f"{BATCH} rows and {DELAY_MS:g} ms delay; each server's process tree on one core (for "
        "TorchServe: the runtime, TorchServe's Java frontend and its one Python worker), wrk "
        f"on the other; each server first warmed up for {meta['server_warmup']:g} s at "
        f"concurrency 32, then {meta['duration']:g} s per cell after {meta['warmup']:g} s of "
        "warm-up, "
        f"{len(repeats)} repeats, every server measured in turn within each repeat. Machine: "
        f"{meta['machine']}, {meta['python']}, {meta['date']}; shared with other work: load "
        f"average {meta['load_before']:.2f} before, {meta['load_after']:.2f} after, "
        f"{min(loads):.2f}-{max(loads):.2f} at the start of the cells. Command: "
        f"`{meta['command']}`.",
        "",
        "Median over the repeats (lowest-highest in brackets):",
        "",
        "| server | concurrency | requests/s | p50 ms | p99 ms | server CPU µs/request "
        "| mean batch | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for side in sides:
        for c in CONCURRENCY:
            cells = [by[side, c, k] for k in repeats if (side, c, k) in by]
            if not cells:
                continue
            lines.append(
                f"| {side} | {c} | {_spread([x['rps'] for x in cells], ',.0f')} "
                f"| {_spread([x['p50_us'] / 1000 for x in cells], '.2f')} "
                f"| {_spread([x['p99_us'] / 1000 for x in cells], '.2f')} "
                f"| {_spread([x['cpu_us'] for x in cells], ',.0f')} "
                f"| {statistics.median(x['batch'] for x in cells):.1f} "
                f"| {sum(x['errors'] for x in cells)} |"
            )
    lines += [
        "",
        "Ratios within each repeat, requests/s and per CPU-second (median, lowest-highest):",
        "",
    ]
    pairs = []
    baseline = next((s for s in sides if s.startswith(f"{TS}, ") and s != SPLIT), None)
    if baseline:
        pairs.append((TS, baseline, "this tree over the baseline"))
    if SPLIT in sides:
        pairs.append((TS, SPLIT, "one request per batch over rows batched by TorchServe"))
    pairs.append((ONNX, TS, "ONNX over TorchServe"))
    for c in CONCURRENCY:
        for top, bottom, words in pairs:
            keys = [k for k in repeats if (top, c, k) in by and (bottom, c, k) in by]
            rps = [by[top, c, k]["rps"] / by[bottom, c, k]["rps"] for k in keys]
            cpu = [by[bottom, c, k]["cpu_us"] / by[top, c, k]["cpu_us"] for k in keys]
            if keys:
                lines.append(
                    f"- c={c}, {words}: {_spread(rps, '.1f')}x; per CPU-second "
                    f"{_spread(cpu, '.1f')}x"
                )
    lines += [
        "",
        "The runtime sends each batch to TorchServe as one request in its binary tensor "
        "format, and its own handler in TorchServe's worker calls the `.mar`'s handler once "
        "with the batch's rows (docs/torchserve.md). Rows sent as TorchServe requests of "
        "their own (the baseline with JSON, `--split-rows` with the binary format) pay "
        "TorchServe's per-request round trip (HTTP into its Java frontend, a job, a frame to "
        "the worker and back) and a runtime thread and HTTP call for every row. The server "
        "CPU column adds up the whole process tree (for TorchServe: the runtime, Java and "
        "the worker) per answered request: on a core of its own, requests/s would be about "
        "10^6 over it, and it depends far less on the neighbours than the wall-clock columns.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """`torchserve-results.md`, and the same section in RESULTS.md when that file exists."""
    (HERE / "torchserve-results.md").write_text(text)
    path = HERE / "RESULTS.md"
    if not path.exists():
        return
    current = path.read_text()
    if SECTION in current:
        before, _, rest = current.partition(SECTION)
        # Keep whatever follows the section (the next "## " heading on).
        after = rest.split("\n## ", 1)
        tail = "\n## " + after[1] if len(after) > 1 else ""
        current = before.rstrip("\n") + "\n\n" + text + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--server-warmup", type=float, default=5.0, help="seconds at c=32 per server, first"
    )
    parser.add_argument("--baseline", metavar="REV", help="also the TorchServe model at REV")
    parser.add_argument(
        "--split-rows", action="store_true", help="also rows batched by TorchServe's aggregator"
    )
    parser.add_argument("--write", action="store_true", help="update the results files")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from torchserve.json"
    )
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((HERE / "torchserve.json").read_text())
        text = report(saved["rows"], saved["meta"])
        print(text)
        write_section(text)
        return
    started = time.monotonic()
    meta: dict[str, Any] = {
        "command": "benchmarks/runtime/torchserve.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "duration": args.duration,
        "warmup": args.warmup,
        "server_warmup": args.server_warmup,
        "load_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        repo, work = Path(tmp) / "repo", Path(tmp) / "work"
        work.mkdir()
        write_mar(repo, batch=BATCH, delay_ms=DELAY_MS, onnx=True)
        config = {"batching": {"max_batch_size": BATCH, "max_delay_ms": DELAY_MS}}
        (repo / "tiny_onnx" / "config.yaml").write_text(yaml.safe_dump(config))
        rows = measure(args, repo, work)
    meta["load_after"] = os.getloadavg()[0]
    text = report(rows, meta)
    print(text)
    if args.write:
        write_section(text)
        (HERE / "torchserve.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"took {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
