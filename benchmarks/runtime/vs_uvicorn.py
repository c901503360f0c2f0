"""The runtime's own HTTP server against uvicorn's httptools protocol, on the same handlers.

    .venv/bin/uv pip install --python .venv/bin/python uvicorn   # benchmark-only
    .venv/bin/python benchmarks/runtime/vs_uvicorn.py [--duration 3] [--rounds 2]

Both serve the same `HttpApi` (the v2 and TF-Serving routes) over the same repository code
for the tiny model, unbatched, one intra-op thread, uvloop, the server pinned to core 1 and
wrk on core 0 (as run.py does). "own" is `modelpilot-runtime serve`; "uvicorn" is
uvicorn's `httptools` protocol with an ASGI adapter in front of the same `HttpApi`. The
rounds alternate the two, so a busy neighbour hurts both alike. Prints a table and writes
vs_uvicorn.json next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "runtime-image/src"))

from run import CLIENT_CORE, SERVER_CORE, cpu_seconds, free_port, run_wrk, write_bodies  # noqa: E402


def serve_uvicorn(model_dir: Path, port: int) -> None:
    """The uvicorn side: the runtime's HttpApi behind an ASGI adapter."""
    import asyncio

    import uvicorn

    from modelpilot_runtime.metrics import Metrics
    from modelpilot_runtime.repository.repository import ModelRepository
    from modelpilot_runtime.server.httpserver import Request, Response
    from modelpilot_runtime.server.routes import HttpApi, RuntimeState

    async def main() -> None:
        metrics = Metrics()
        defaults = {"onnx": {"intra_op_threads": 1, "inter_op_threads": 1}}
        repo = ModelRepository(
            metrics, Path("/tmp/modelpilot-vs-uvicorn"), defaults, models={"tiny": model_dir}
        )
        await repo.sync()
        api = HttpApi(RuntimeState(repo, metrics))

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            chunks = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            request = Request(
                scope["method"].encode(),
                scope["path"],
                scope["query_string"].decode("latin-1"),
                dict(scope["headers"]),
                b"".join(chunks),
                True,
            )
            result = api(request)
            response = result if isinstance(result, Response) else await result
            headers = [(b"content-type", response.content_type), *(response.headers or [])]
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": response.body})

        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
            backlog=2048,
        )
        await uvicorn.Server(config).serve()

    asyncio.run(main())


def start(kind: str, model_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if kind == "own":
        cmd = [
            str(ROOT / ".venv/bin/modelpilot-runtime"), "--log-level", "warning", "serve",
            "--model", f"tiny={model_dir}", "--host", "127.0.0.1", "--http-port", str(port),
            "--grpc-port", "-1", "--intra-op-threads", "1", "--inter-op-threads", "1",
            "--poll-interval", "0", "--max-queue", "1024",
        ]  # fmt: skip
    else:
        cmd = [sys.executable, __file__, "--serve-uvicorn", str(model_dir), str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, *cmd], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v2/models/tiny/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"{kind} server did not become ready; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--serve-uvicorn", nargs=2, metavar=("MODEL_DIR", "PORT"))
    args = parser.parse_args()
    if args.serve_uvicorn:
        serve_uvicorn(Path(args.serve_uvicorn[0]), int(args.serve_uvicorn[1]))
        return
    from modelpilot_runtime.samples import write_repository

    work = Path(os.environ.get("MODELPILOT_BENCH_DIR", Path.home() / ".cache/modelpilot/bench"))
    work.mkdir(parents=True, exist_ok=True)
    repo = write_repository(work / "models", ["tiny"])
    bodies = write_bodies("tiny", work)
    n = bodies["http-binary-header"].read_text()
    protocols = {
        "http-json": (bodies["http-json"], "Content-Type: application/json"),
        "http-binary": (
            bodies["http-binary"],
            f"Content-Type: application/octet-stream|Inference-Header-Content-Length: {n}",
        ),
    }
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    for round_ in range(args.rounds):
        for kind in ("own", "uvicorn") if round_ % 2 == 0 else ("uvicorn", "own"):
            proc, url = start(kind, repo / "tiny", work / "vs_uvicorn.log")
            try:
                for protocol, (body, headers) in protocols.items():
                    for conc in map(int, args.concurrency.split(",")):
                        infer = f"{url}/v2/models/tiny/infer"
                        run_wrk(infer, body, headers, conc, 0.5)  # warm-up
                        cpu0 = cpu_seconds(proc.pid)
                        result = run_wrk(infer, body, headers, conc, args.duration)
                        cpu = cpu_seconds(proc.pid) - cpu0
                        requests = result["rps"] * max(1, round(args.duration))
                        row = {"round": round_, "server": kind, "protocol": protocol,
                               "concurrency": conc, **result,
                               "server_cpu_us": 1e6 * cpu / max(requests, 1)}  # fmt: skip
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
    summary = []
    for protocol in protocols:
        for conc in map(int, args.concurrency.split(",")):
            cell = {"protocol": protocol, "concurrency": conc}
            for kind in ("own", "uvicorn"):
                mine = [r for r in rows if r["server"] == kind and r["protocol"] == protocol
                        and r["concurrency"] == conc]  # fmt: skip
                cell[kind] = {
                    "rps": max(r["rps"] for r in mine),
                    "p50_ms": min(r["p50_us"] for r in mine) / 1000,
                    "p99_ms": min(r["p99_us"] for r in mine) / 1000,
                    "cpu_us": min(r["server_cpu_us"] for r in mine),
                    "errors": sum(r["errors"] for r in mine),
                }
            summary.append(cell)
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "client_core": CLIENT_CORE,
        "rows": rows,
        "best_of_rounds": summary,
    }
    (HERE / "vs_uvicorn.json").write_text(json.dumps(doc, indent=1))
    print(
        "| protocol | conc | own req/s | uvicorn req/s | own/uvicorn | own p50 ms "
        "| uvicorn p50 ms | own CPU µs/req | uvicorn CPU µs/req |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in summary:
        o, u = c["own"], c["uvicorn"]
        print(f"| {c['protocol']} | {c['concurrency']} | {o['rps']:,.0f} | {u['rps']:,.0f} | "
              f"{o['rps'] / u['rps']:.2f} | {o['p50_ms']:.3f} | {u['p50_ms']:.3f} | "
              f"{o['cpu_us']:.1f} | {u['cpu_us']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
