"""GPU check for the ONNX backend: which execution providers load, that each falls back to
CPU when absent, that each gives the CPU's answers within tolerance, and the cnn model's
batched throughput per provider. Run by gpu.sh; writes a JSON report.

    python gpu_check.py OUT_JSON [--seconds 5] [--batches 1,8,32,64]

Three layers, each recorded:
1. onnxruntime alone: a session per provider (TensorRT, CUDA, CPU), the provider it really
   runs on, max deviation from the CPU outputs (tiny, mlp, cnn at batch 8), and cnn
   rows/s and p50 per call at each batch size (inputs already on the host, as the server
   gives them).
2. The runtime's own backend (OnnxBackend with execution_providers [tensorrt, cuda, cpu] and
   each alone): the provider it reports, so the fallback chain is what the server does.
3. The runtime server itself (subprocess, --providers tensorrt,cuda,cpu, batching on): the
   provider in model metadata, an answer compared with CPU, and cnn throughput over HTTP
   with binary tensors at concurrency 32 (a Python client: wrk is not assumed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime-image/src"))

from modelpilot_runtime.backends.onnx import OnnxBackend  # noqa: E402
from modelpilot_runtime.config import ModelConfig  # noqa: E402
from modelpilot_runtime.samples import write_repository  # noqa: E402

PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
SHAPES = {"tiny": [8], "mlp": [784], "cnn": [3, 64, 64]}
# fp32 on every provider (TensorRT's fp16 is off by default): differences are reduction order.
RTOL, ATOL = 1e-3, 1e-4


def session(path: Path, provider: str) -> ort.InferenceSession:
    providers = (
        [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    )
    return ort.InferenceSession(str(path), providers=providers)


def throughput(
    sess: ort.InferenceSession, shape: list[int], batch: int, seconds: float
) -> dict[str, float]:
    x = np.random.default_rng(0).random([batch, *shape], dtype=np.float32)
    feeds = {sess.get_inputs()[0].name: x}
    for _ in range(10):  # engine builds, autotuning, allocations
        sess.run(None, feeds)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    arr = np.array(times)
    return {
        "batch": batch,
        "calls": len(times),
        "rows_per_s": batch * len(times) / float(arr.sum()),
        "p50_ms": float(np.percentile(arr, 50) * 1e3),
    }


def onnxruntime_layer(repo: Path, seconds: float, batches: list[int]) -> dict[str, Any]:
    available = ort.get_available_providers()
    out: dict[str, Any] = {"available": available, "providers": {}}
    rng = np.random.default_rng(1)
    inputs = {m: rng.random([8, *s], dtype=np.float32) for m, s in SHAPES.items()}
    reference = {
        m: session(repo / m / "1/model.onnx", "CPUExecutionProvider").run(None, {"input": x})[0]
        for m, x in inputs.items()
    }
    for provider in PROVIDERS:
        entry: dict[str, Any] = {"in_build": provider in available}
        try:
            sessions = {m: session(repo / m / "1/model.onnx", provider) for m in SHAPES}
        except Exception as exc:  # a provider that is in the build but cannot start
            entry["error"] = f"{type(exc).__name__}: {exc}"
            out["providers"][provider] = entry
            continue
        entry["runs_on"] = sessions["cnn"].get_providers()[0]
        entry["fell_back_to_cpu"] = entry["runs_on"] == "CPUExecutionProvider" != provider
        deviation = {}
        for m, x in inputs.items():
            got = sessions[m].run(None, {"input": x})[0]
            deviation[m] = float(np.max(np.abs(got - reference[m])))
            if not np.allclose(got, reference[m], rtol=RTOL, atol=ATOL):
                entry.setdefault("mismatch", []).append(m)
        entry["max_abs_deviation_vs_cpu"] = deviation
        entry["same_answers_as_cpu"] = "mismatch" not in entry
        entry["cnn_throughput"] = [
            throughput(sessions["cnn"], SHAPES["cnn"], b, seconds) for b in batches
        ]
        out["providers"][provider] = entry
    return out


def backend_layer(repo: Path) -> dict[str, Any]:
    out = {}
    for chain in (["tensorrt", "cuda", "cpu"], ["cuda"], ["tensorrt"], ["cpu"]):
        config = ModelConfig.model_validate({"onnx": {"execution_providers": chain}})
        backend = OnnxBackend(repo / "cnn/1", config, Path(tempfile.gettempdir()))
        try:
            info = backend.load()
            out[",".join(chain)] = {
                "provider": info.provider,
                "providers": info.details["providers"],
            }
        except Exception as exc:
            out[",".join(chain)] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            backend.unload()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_load(
    url: str, body: bytes, header_len: int, concurrency: int, seconds: float
) -> dict[str, float]:
    done = 0
    errors = 0
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal done, errors
        while time.perf_counter() < end:
            t = time.perf_counter()
            r = await c.post(
                url, content=body, headers={"Inference-Header-Content-Length": str(header_len)}
            )
            latencies.append(time.perf_counter() - t)
            if r.status_code == 200:
                done += 1
            else:
                errors += 1

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "req_per_s": done / elapsed,
        "errors": errors,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies else 0.0,
        "p99_ms": float(np.percentile(latencies, 99) * 1e3) if latencies else 0.0,
    }


def binary_request(x: np.ndarray[Any, Any]) -> tuple[bytes, bytes]:
    """A v2 request with `x` as binary tensor data: its JSON head, and head plus data."""
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head, head + x.tobytes()


def server_layer(repo: Path, seconds: float, workdir: Path) -> dict[str, Any]:
    port = free_port()
    log = workdir / "gpu-server.log"
    cmd = [
        str(ROOT / ".venv/bin/modelpilot-runtime"), "--log-level", "info", "serve",
        "--model", f"cnn={repo / 'cnn'}", "--host", "127.0.0.1", "--http-port", str(port),
        "--grpc-port", "-1", "--poll-interval", "0", "--providers", "tensorrt,cuda,cpu",
        "--max-batch-size", "32", "--max-batch-delay-ms", "2", "--max-queue", "1024",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # a TensorRT engine build can take minutes
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return {"error": f"server exited {proc.returncode}", "log": log.read_text()[-4000:]}
            try:
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            return {"error": "server not ready within 600 s", "log": log.read_text()[-4000:]}
        meta = httpx.get(url + "/v2/models/cnn").json()
        x = np.random.default_rng(2).random([4, *SHAPES["cnn"]], dtype=np.float32)
        head, body = binary_request(x)
        r = httpx.post(
            url + "/v2/models/cnn/infer",
            content=body,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        n = int(r.headers["inference-header-content-length"])
        got = np.frombuffer(r.content[n:], np.float32).reshape(4, 10)
        want = session(repo / "cnn/1/model.onnx", "CPUExecutionProvider").run(None, {"input": x})[0]
        head1, body1 = binary_request(x[:1])
        load = asyncio.run(http_load(url + "/v2/models/cnn/infer", body1, len(head1), 32, seconds))
        return {
            "execution_provider": meta.get("parameters", {}).get("execution_provider"),
            "max_abs_deviation_vs_cpu": float(np.max(np.abs(got - want))),
            "same_answers_as_cpu": bool(np.allclose(got, want, rtol=RTOL, atol=ATOL)),
            "http_binary_batched": load,
        }
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", default="1,8,32,64")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = write_repository(work / "models", list(SHAPES))
        report = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "onnxruntime": ort.__version__,
            "device": ort.get_device(),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "onnxruntime_alone": onnxruntime_layer(repo, args.seconds, batches),
            "runtime_backend": backend_layer(repo),
            "runtime_server": server_layer(repo, args.seconds, args.out.parent),
        }
    args.out.write_text(json.dumps(report, indent=2))
    for provider, entry in report["onnxruntime_alone"]["providers"].items():
        if "error" in entry:
            print(f"{provider}: did not start: {entry['error']}")
            continue
        best = max(entry["cnn_throughput"], key=lambda r: r["rows_per_s"])
        print(
            f"{provider}: runs on {entry['runs_on']}, same answers as CPU: "
            f"{entry['same_answers_as_cpu']}, cnn best {best['rows_per_s']:.0f} rows/s "
            f"at batch {best['batch']}"
        )
    print("runtime backend:", json.dumps(report["runtime_backend"]))
    print("runtime server:", json.dumps(report["runtime_server"].get("execution_provider")),
          json.dumps(report["runtime_server"].get("http_binary_batched")))  # fmt: skip


if __name__ == "__main__":
    main()
