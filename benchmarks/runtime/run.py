"""The runtime benchmark: the server pinned to one core, a native load generator on the other.

    benchmarks/runtime/install.sh                 # wrk, ghz, matplotlib
    .venv/bin/python benchmarks/runtime/run.py [--duration 5] [--models tiny,mlp,cnn]

For each model (tiny, mlp, cnn), batching off and on, protocol (HTTP JSON, HTTP binary,
gRPC) and concurrency (1, 8, 64): requests per second, p50 and p99 latency, the mean batch
size the server formed, and the ratio to the ceiling (onnxruntime in-process on the same
core, batch 1 and the batch sizes formed). Writes results.json, RESULTS.md and
latency.png here.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROTO = ROOT / "runtime-image/src/modelpilot_runtime/server/proto/inference.proto"
SHAPES = {"tiny": [8], "mlp": [784], "cnn": [3, 64, 64]}
PROTOCOLS = ["http-json", "http-binary", "grpc"]
CONCURRENCY = [1, 8, 64]
# Batching "on" gathers whatever is queued when the model is free (no added delay). The cnn's
# convolutions gain nothing per row from large batches on one core and lose cache locality,
# so its batches are capped lower.
MAX_BATCH = {"tiny": 64, "mlp": 64, "cnn": 16}


def batching_flags(model: str, batching: str) -> list[str]:
    if batching == "off":
        return []
    return ["--max-batch-size", str(MAX_BATCH[model]), "--max-batch-delay-ms", "0"]


SERVER_CORE, CLIENT_CORE = "1", "0"
# --realtime: server, load generator and ceiling under SCHED_FIFO, so that other work on a
# shared machine does not stand between a request and its answer (latency runs).
PRIORITY: list[str] = []
KEPT_SECTIONS = (
    "## TorchServe backend vs ONNX backend",
    "## Side by side with the previous commit (issue 13: isolation, strictness, limits)",
)
GHZ_VERSION = "v0.121.0"  # as installed by install.sh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_bodies(model: str, work: Path) -> dict[str, Path]:
    shape = [1, *SHAPES[model]]
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    bodies = {}
    doc = {
        "inputs": [
            {
                "name": "input",
                "shape": shape,
                "datatype": "FP32",
                "data": [round(float(v), 4) for v in x.ravel()],
            }
        ]
    }
    bodies["http-json"] = work / f"{model}.json"
    bodies["http-json"].write_bytes(json.dumps(doc, separators=(",", ":")).encode())
    raw = x.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        separators=(",", ":"),
    ).encode()
    bodies["http-binary"] = work / f"{model}.bin"
    bodies["http-binary"].write_bytes(head + raw)
    bodies["http-binary-header"] = work / f"{model}.binhdr"
    bodies["http-binary-header"].write_text(str(len(head)))
    grpc_doc = {
        "model_name": model,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}],
        "raw_input_contents": [base64.b64encode(raw).decode()],
    }
    bodies["grpc"] = work / f"{model}.grpc.json"
    bodies["grpc"].write_text(json.dumps(grpc_doc))
    # The same request serialized, for grpcload (which sends bytes as they are).
    from modelpilot_runtime.server.proto import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[raw])
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    bodies["grpc-bin"] = work / f"{model}.grpc.bin"
    bodies["grpc-bin"].write_bytes(request.SerializeToString())
    return bodies


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_totals(url: str, model: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    total = {"sum": 0.0, "count": 0.0}
    for kind in total:
        m = re.search(
            rf'^modelpilot_inference_batch_size_{kind}{{model="{model}",version="1"}} (\S+)$',
            text,
            re.M,
        )
        if m:
            total[kind] = float(m.group(1))
    return total["sum"], total["count"]


def run_wrk(
    url: str, body: Path, headers: str, concurrency: int, seconds: float
) -> dict[str, float]:
    env = {**os.environ, "BODY_FILE": str(body), "HEADERS": headers}
    out = subprocess.run(
        [
            *PRIORITY,
            "taskset",
            "-c",
            CLIENT_CORE,
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            str(HERE / "wrk.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    return {
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_us": result["p50_us"],
        "p99_us": result["p99_us"],
        "errors": result["errors"] + result["non2xx"],
    }


def run_ghz(ghz: str, target: str, data: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            *PRIORITY, "taskset", "-c", CLIENT_CORE, ghz, "--insecure", "--proto", str(PROTO),
            "--call", "inference.GRPCInferenceService.ModelInfer", "-D", str(data),
            "-c", str(concurrency), "-z", f"{seconds}s", "--connections", "1", "--cpus", "1",
            "--format", "json", target,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    doc = json.loads(out)
    dist = {d["percentage"]: d["latency"] / 1000 for d in doc.get("latencyDistribution") or []}
    codes = doc.get("statusCodeDistribution") or {}
    ok = codes.get("OK", 0)
    # ghz cancels the calls still in flight when the duration ends, or closes the connection
    # under them; those are not errors of the server.
    kinds = doc.get("errorDistribution") or {}
    at_end = sum(n for k, n in kinds.items() if "use of closed network connection" in k)
    errors = doc["count"] - ok - codes.get("Canceled", 0) - at_end
    return {
        "rps": ok / (doc["total"] / 1e9),
        "p50_us": dist.get(50, 0.0),
        "p99_us": dist.get(99, 0.0),
        "errors": errors,
        "error_kinds": kinds,
    }


@dataclass
class Target:
    model: str
    url: str
    grpc_target: str
    bodies: dict[str, Path]
    ghz: str


def run_grpcload(
    grpcload: str, target: str, data: Path, concurrency: int, seconds: float
) -> dict[str, Any]:
    out = subprocess.run(
        [
            *PRIORITY, "taskset", "-c", CLIENT_CORE, grpcload, "-target", target,
            "-data", str(data), "-c", str(concurrency), "-d", f"{seconds}s", "-cpus", "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    doc = json.loads(out)
    return {
        "rps": doc["requests"] / (doc["duration_us"] / 1e6),
        "p50_us": doc["p50_us"],
        "p99_us": doc["p99_us"],
        "errors": doc["errors"],
        "error_kinds": doc["error_kinds"],
    }


def load(t: Target, protocol: str, concurrency: int, seconds: float) -> dict[str, Any]:
    if protocol == "grpc":
        # `ghz` names the gRPC load generator: ghz, or the leaner grpcload.
        if Path(t.ghz).name == "grpcload":
            return run_grpcload(t.ghz, t.grpc_target, t.bodies["grpc-bin"], concurrency, seconds)
        return run_ghz(t.ghz, t.grpc_target, t.bodies["grpc"], concurrency, seconds)
    headers = "Content-Type: application/json"
    if protocol == "http-binary":
        n = t.bodies["http-binary-header"].read_text()
        headers = f"Content-Type: application/octet-stream|Inference-Header-Content-Length: {n}"
    infer = f"{t.url}/v2/models/{t.model}/infer"
    return run_wrk(infer, t.bodies[protocol], headers, concurrency, seconds)


def start_server(
    model: str,
    repo: Path,
    batching: list[str],
    log: Path,
    src: Path | None = None,
    env: dict[str, str] | None = None,
    ready_within: float = 60.0,
) -> tuple[subprocess.Popen[bytes], str, str]:
    """A runtime serving `model` on the server core, run by this interpreter: this tree's, or
    the sources at `src` (see `baseline_sources`). Returns the process, its HTTP URL and its
    gRPC target once it is ready."""
    http_port, grpc_port = free_port(), free_port()
    cmd = [
        *PRIORITY, "taskset", "-c", SERVER_CORE, sys.executable, "-m", "modelpilot_runtime",
        "--log-level", "warning", "serve",
        "--model", f"{model}={repo / model}", "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--intra-op-threads", "1", "--inter-op-threads", "1", "--poll-interval", "0",
        "--max-queue", "1024", *batching,
    ]  # fmt: skip
    full_env = {**os.environ, **(env or {})}
    if src is not None:
        full_env["PYTHONPATH"] = str(src)
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return proc, url, f"127.0.0.1:{grpc_port}"
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"server for {model} did not become ready; see {log}")


def baseline_sources(rev: str, work: Path) -> Path:
    """The runtime's sources as they were at git revision `rev` (git archive, into work),
    for `start_server(src=...)`."""
    dest = work / "baseline"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "runtime-image/src"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "runtime-image/src"


def ceiling(model_path: Path, shape: list[int], batches: list[int]) -> dict[int, dict[str, float]]:
    out = subprocess.run(
        [
            *PRIORITY,
            "taskset",
            "-c",
            SERVER_CORE,
            sys.executable,
            str(HERE / "ceiling.py"),
            str(model_path),
            json.dumps(shape),
            *map(str, batches),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {int(r["batch"]): r for r in json.loads(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--models", default="tiny,mlp,cnn")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from results.json"
    )
    parser.add_argument(
        "--realtime", action="store_true", help="run server, client and ceiling under SCHED_FIFO"
    )
    args = parser.parse_args()
    if args.realtime:
        PRIORITY[:] = ["chrt", "-f", "10"]
    if args.report_only:
        report(args.out)
        return
    ghz = shutil.which("ghz") or str(Path.home() / ".cache/modelpilot/bin/ghz")
    work = Path(os.environ.get("MODELPILOT_BENCH_DIR", Path.home() / ".cache/modelpilot/bench"))
    work.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    sys.path.insert(0, str(ROOT / "runtime-image/src"))
    from modelpilot_runtime.samples import write_repository

    repo = write_repository(work / "models", models)
    log = work / "server.log"
    started = time.time()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    ceilings: dict[str, dict[str, dict[str, float]]] = {}
    for model in models:
        bodies = write_bodies(model, work)
        for batching in ("off", "on"):
            flags = batching_flags(model, batching)
            proc, url, grpc_target = start_server(model, repo, flags, log)
            try:
                for protocol in args.protocols.split(","):
                    for conc in map(int, args.concurrency.split(",")):
                        target = Target(model, url, grpc_target, bodies, ghz)
                        load(target, protocol, conc, args.warmup)
                        s0, c0 = batch_totals(url, model)
                        cpu0 = cpu_seconds(proc.pid)
                        result = load(target, protocol, conc, args.duration)
                        cpu1 = cpu_seconds(proc.pid)
                        s1, c1 = batch_totals(url, model)
                        # Server CPU time per answered request: unlike latency, not inflated
                        # by other processes competing for the core.
                        answered = s1 - s0
                        result["server_cpu_us"] = (
                            1e6 * (cpu1 - cpu0) / answered if answered else 0.0
                        )
                        mean_batch = (s1 - s0) / (c1 - c0) if c1 > c0 else 0.0
                        row = {
                            "model": model,
                            "batching": batching,
                            "protocol": protocol,
                            "concurrency": conc,
                            "mean_batch": mean_batch,
                            **result,
                        }
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
        batches = sorted(
            {1, *(max(1, round(r["mean_batch"])) for r in rows if r["model"] == model)}
        )
        ceil = ceiling(repo / model / "1" / "model.onnx", SHAPES[model], batches)
        for r in rows:
            if r["model"] != model:
                continue
            b1 = ceil[1]
            r["ceiling_b1_rows_per_s"] = b1["rows_per_s"]
            r["ratio_b1"] = r["rps"] / b1["rows_per_s"]
            formed = ceil[max(1, round(r["mean_batch"]))]
            r["ceiling_formed_rows_per_s"] = formed["rows_per_s"]
            r["ratio_formed"] = r["rps"] / formed["rows_per_s"]
            r["bare_p50_us"] = b1["p50_us"]
            # The same ratios per CPU-second on both sides: robust to a busy machine.
            per_cpu = 1e6 / r["server_cpu_us"] if r["server_cpu_us"] else 0.0
            r["cpu_ratio_b1"] = per_cpu / b1["rows_per_cpu_s"]
            r["cpu_ratio_formed"] = per_cpu / formed["rows_per_cpu_s"]
            r["added_p50_us"] = r["p50_us"] - b1["p50_us"]
        ceilings[model] = {str(b): v for b, v in ceil.items()}
        print(json.dumps({"model": model, "ceiling": ceil}), flush=True)
    meta = machine(args, started, load_before)
    saved = {"meta": meta, "rows": rows, "ceilings": ceilings}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "results-realtime.json" if args.realtime else "results.json"
    (args.out / name).write_text(json.dumps(saved, indent=1))
    report(args.out)


def report(out: Path) -> None:
    """RESULTS.md from results.json (the full run) and, when present, results-realtime.json
    (a run under real-time priority, for latency at low concurrency)."""
    rt_file = out / "results-realtime.json"
    realtime = json.loads(rt_file.read_text()) if rt_file.is_file() else None
    full_file = out / "results.json"
    full = json.loads(full_file.read_text()) if full_file.is_file() else realtime
    if full is realtime:
        realtime = None
    assert full is not None, f"no results in {out}"
    write_report(full["rows"], full["meta"], full.get("ceilings", {}), out, realtime)


def machine(
    args: argparse.Namespace, started: float, load_before: tuple[float, float, float]
) -> dict[str, Any]:
    import onnxruntime

    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(x.split(":", 1)[1].strip() for x in lines if x.startswith("model name"))
    wrk_version = subprocess.run(
        ["wrk", "-v"], capture_output=True, text=True, check=False
    ).stdout.split("\n")[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "wrk": wrk_version.split(" [")[0].strip(),
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "command": "benchmarks/runtime/run.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items()
            if k not in ("out", "report_only") and v is not False
        ),
    }


def write_report(
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    ceilings: dict[str, dict[str, dict[str, float]]],
    out: Path,
    realtime: dict[str, Any] | None = None,
) -> None:
    rt_rows: list[dict[str, Any]] = realtime["rows"] if realtime else []
    plot(rows, out / "latency.png")
    notes = HERE / "notes.md"
    header = (
        f"Made by `benchmarks/runtime/install.sh` then `{meta['command']}` (server on core "
        f"{SERVER_CORE}, load generator on core {CLIENT_CORE}; onnxruntime with one intra-op "
        "and one inter-op thread everywhere).\n\n"
        f"Machine: {meta['cpu']}, {meta['cores']} cores; Python {meta['python']}, onnxruntime "
        f"{meta['onnxruntime']}, {meta['wrk']}, ghz {GHZ_VERSION}; {meta['date']}; load average "
        f"{meta['load_before'][0]} before, {meta['load_after'][0]} after.\n"
    )
    legend = (
        "`vs in-process b1`: requests (one row each) per second over in-process batch-1 rows per "
        "second. `vs in-process at formed batch`: the same over in-process rows per second at the "
        "mean batch size the server formed. `added p50`: the server's p50 minus a bare "
        "`session.run` at batch 1. `server CPU µs/req`: the server process's CPU time per answered "
        "request, which other processes on the machine do not inflate the way they inflate "
        "latency.\n"
    )
    parts = [
        "# Runtime benchmark results\n",
        header,
        notes.read_text() if notes.is_file() else "",
        "## Goals\n",
        goals(rows, rt_rows),
        "## Ceilings (onnxruntime in-process, same core)\n",
        "\n".join(ceiling_table(ceilings)) + "\n",
        "## All runs\n",
        legend,
        "\n".join(table(rows)) + "\n",
        "![p50 latency against concurrency](latency.png)\n",
    ]
    if realtime is not None:
        m = realtime["meta"]
        parts += [
            "## Low concurrency under real-time priority\n",
            "Latency at low concurrency suffers most from a busy machine: every request waits "
            "for the scheduler to wake the server and then the load generator. This run put the "
            "server, the load generator and the ceiling under SCHED_FIFO, so the neighbours' work "
            f"waited instead: `{m['command']}`, {m['date']}, load average "
            f"{m['load_before'][0]}.\n",
            "\n".join(table(rt_rows)) + "\n",
            "\n".join(ceiling_table(realtime.get("ceilings", {}))) + "\n",
        ]
    results = out / "RESULTS.md"
    # Sections other benchmarks keep in this file (benchmarks/runtime/torchserve.py) stay.
    if results.is_file():
        old = results.read_text()
        for kept in KEPT_SECTIONS:
            if kept in old:
                parts.append(old[old.index(kept) :])
                break
    results.write_text("\n".join(parts))


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | batching | protocol | conc | req/s | p50 ms | p99 ms | mean batch "
        "| vs in-process b1 | vs in-process at formed batch | added p50 µs | server CPU µs/req "
        "| per CPU-second: vs b1 | per CPU-second: vs formed batch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batching']} | {r['protocol']} | {r['concurrency']} "
            f"| {r['rps']:,.0f} | "
            f"{r['p50_us'] / 1000:.3f} | {r['p99_us'] / 1000:.3f} | {r['mean_batch']:.1f} | "
            f"{100 * r['ratio_b1']:.1f}% | {r['ratio_formed']:.2f} | "
            f"{r['added_p50_us']:.0f} | {r['server_cpu_us']:.1f} | "
            f"{100 * r.get('cpu_ratio_b1', 0):.1f}% | {r.get('cpu_ratio_formed', 0):.2f} |"
            + (" ⚠ errors" if r["errors"] else "")
        )
    return lines


def ceiling_table(ceilings: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    lines = [
        "| model | batch | rows/s | rows per CPU-second | p50 per call µs |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, by_batch in ceilings.items():
        for batch, c in sorted(by_batch.items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"| {model} | {batch} | {c['rows_per_s']:,.0f} | {c.get('rows_per_cpu_s', 0):,.0f} "
                f"| {c['p50_us']:.1f} |"
            )
    return lines


def goals(rows: list[dict[str, Any]], rt_rows: list[dict[str, Any]] | None = None) -> str:
    """The issue's goals, checked against this run: throughput goals both as measured (wall
    clock) and per CPU-second (what a dedicated core would give)."""

    def pick(**match: Any) -> list[dict[str, Any]]:
        return [r for r in rows if all(r.get(k) == v for k, v in match.items())]

    def yes(ok: bool) -> str:
        return "yes" if ok else "no"

    out = ["| goal | measured | met | per CPU-second | met |", "|---|---|---|---|---|"]
    for batching in ("off", "on"):
        for r in pick(model="tiny", protocol="http-json", concurrency=64, batching=batching):
            wall, cpu = r["ratio_b1"], r.get("cpu_ratio_b1", 0.0)
            out.append(
                f"| tiny, HTTP JSON, concurrency 64, batching {batching}: ≥ 10% of in-process "
                f"batch-1 rows/s | {100 * wall:.1f}% | {yes(wall >= 0.1)} | {100 * cpu:.1f}% "
                f"| {yes(cpu >= 0.1)} |"
            )
    for protocol, limit in (("http-json", 120), ("http-binary", 120), ("grpc", 250)):
        for source, label in ((rows, ""), (rt_rows or [], ", real-time priority")):
            for r in source:
                if (r["model"], r["protocol"], r["concurrency"], r["batching"]) != (
                    "tiny",
                    protocol,
                    1,
                    "off",
                ):
                    continue
                added = r["added_p50_us"]
                out.append(
                    f"| tiny, {protocol}, concurrency 1{label}: added p50 < {limit} µs "
                    f"| {added:.0f} µs | {yes(added < limit)} | | |"
                )
    for r in pick(model="cnn", concurrency=64, batching="on"):
        wall, cpu = r["ratio_formed"], r.get("cpu_ratio_formed", 0.0)
        out.append(
            f"| cnn, {r['protocol']}, concurrency 64, batching: ≥ 0.8 of in-process at the mean "
            f"batch formed ({r['mean_batch']:.1f}) | {wall:.2f} | {yes(wall >= 0.8)} | {cpu:.2f} "
            f"| {yes(cpu >= 0.8)} |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows}, key=list(SHAPES).index)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for protocol in PROTOCOLS:
            for batching, style in (("off", "-"), ("on", "--")):
                pts = sorted(
                    (r["concurrency"], r["p50_us"] / 1000, r["p99_us"] / 1000)
                    for r in rows
                    if (r["model"], r["protocol"], r["batching"]) == (model, protocol, batching)
                )
                if pts:
                    xs, p50, _ = zip(*pts, strict=True)
                    ax.plot(xs, p50, style, marker="o", label=f"{protocol}, batching {batching}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
