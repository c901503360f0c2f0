"""The TorchServe backend next to the ONNX backend, on the same network and weights.

    runtime-image/torchserve/install.sh .venv/bin/python && benchmarks/runtime/install.sh
    .venv/bin/python benchmarks/runtime/torchserve.py [--duration 5] [--write]

The sample `.mar` (`tiny_ts`: 8 -> 16 -> 3, softmax) and its `torch.onnx.export` (`tiny_onnx`)
are served by `modelpilot-runtime` with the same batching (up to 32 rows, 2 ms delay). The
server's whole process tree (for TorchServe: the runtime, Java and the Python worker) is
pinned to one core and wrk to the other, as in `run.py`; HTTP JSON (v2 infer) at concurrency
1 and 32. Prints a Markdown table; `--write` also writes it to `torchserve-results.md` and
replaces (or appends) its section in RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (the runtime benchmark's helpers, beside this file)

from modelpilot_runtime.backends.torchserve.sample import write_mar  # noqa: E402

BATCH, DELAY_MS = 32, 2.0
CONCURRENCY = [1, 32]
SECTION = "## TorchServe backend vs ONNX backend"


def serve(model: str, repo: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc, url, _ = bench.start_server(model, repo, [], log)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(repo: Path, work: Path, duration: float) -> list[dict[str, Any]]:
    body = bench.write_bodies("tiny", work)["http-json"]
    rows = []
    for model, backend in (("tiny_onnx", "onnx"), ("tiny_ts", "torchserve")):
        proc, url = serve(model, repo, work / f"{model}.log")
        try:
            infer = f"{url}/v2/models/{model}/infer"
            for c in CONCURRENCY:
                bench.run_wrk(infer, body, "Content-Type: application/json", c, 1.0)  # warm-up
                before = bench.batch_totals(url, model)
                result = bench.run_wrk(infer, body, "Content-Type: application/json", c, duration)
                after = bench.batch_totals(url, model)
                batches = after[1] - before[1]
                mean_batch = (after[0] - before[0]) / batches if batches else 0.0
                rows.append({"backend": backend, "concurrency": c, **result, "batch": mean_batch})
                print(rows[-1], file=sys.stderr)
        finally:
            stop(proc)
    return rows


def table(rows: list[dict[str, Any]], duration: float) -> str:
    lines = [
        SECTION,
        "",
        f"The sample network (8 -> 16 -> 3, softmax) as a TorchServe `.mar` and as its ONNX "
        f"export, both served by `modelpilot-runtime` over HTTP JSON (v2 infer) with batching "
        f"up to {BATCH} rows and {DELAY_MS:g} ms delay; the server's process tree on one core "
        f"(for TorchServe: the runtime, TorchServe's Java frontend and its one Python worker), "
        f"wrk on the other, {duration:g} s per cell. Machine: {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, shared with other "
        "builds (numbers move by a few percent between runs). Command: "
        "`.venv/bin/python benchmarks/runtime/torchserve.py --write`.",
        "",
        "| backend | concurrency | requests/s | p50 ms | p99 ms | mean batch | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_us'] / 1000:.2f} "
            f"| {r['p99_us'] / 1000:.2f} | {r['batch']:.1f} | {r['errors']} |"
        )
    onnx = {r["concurrency"]: r["rps"] for r in rows if r["backend"] == "onnx"}
    ts = {r["concurrency"]: r["rps"] for r in rows if r["backend"] == "torchserve"}
    ratios = ", ".join(
        f"{onnx[c] / ts[c]:.0f}x at concurrency {c}" for c in CONCURRENCY if ts.get(c)
    )
    lines += [
        "",
        f"ONNX over TorchServe throughput: {ratios}. Each TorchServe row costs an HTTP round "
        "trip from the runtime to TorchServe's frontend and a socket hop to the Python worker; "
        "that is the price of serving `.mar` files unchanged, and why the ONNX export is the "
        "recommended path for models that can be exported.",
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
    parser.add_argument("--write", action="store_true", help="update RESULTS.md")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        repo, work = Path(tmp) / "repo", Path(tmp) / "work"
        work.mkdir()
        write_mar(repo, batch=BATCH, delay_ms=DELAY_MS, onnx=True)
        config = {"batching": {"max_batch_size": BATCH, "max_delay_ms": DELAY_MS}}
        (repo / "tiny_onnx" / "config.yaml").write_text(yaml.safe_dump(config))
        rows = measure(repo, work, args.duration)
    text = table(rows, args.duration)
    print(text)
    if args.write:
        write_section(text)
    print(f"took {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
