"""The `modelpilot-runtime` command.

    modelpilot-runtime serve --model-repository /mnt/models [--http-port 8080] [--grpc-port 8081]
    modelpilot-runtime fetch URI DEST [--sha256 HEX]

`serve` flags set every model's defaults; a model's own `config.yaml` overrides them.
Every flag also reads an environment variable, MODELPILOT_<FLAG> (e.g. MODELPILOT_HTTP_PORT).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any


def _env(name: str, default: Any) -> Any:
    return os.environ.get("MODELPILOT_" + name.upper().replace("-", "_"), default)


def _add(p: Any, flag: str, default: Any, **kw: Any) -> None:
    p.add_argument("--" + flag, default=_env(flag, default), **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpilot-runtime", description="modelpilot's model server"
    )
    parser.add_argument("--log-level", default=_env("log-level", "info"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a model repository")
    # Also accepted after the subcommand; the top-level value is the default.
    serve.add_argument("--log-level", default=argparse.SUPPRESS)
    _add(
        serve, "model-repository", None, type=Path, help="root holding <model>/<version>/model.onnx"
    )
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve one model from PATH (version directories, or model.onnx itself); repeatable",
    )
    _add(serve, "host", "0.0.0.0")
    _add(serve, "http-port", 8080, type=int)
    _add(serve, "grpc-port", 8081, type=int, help="-1 turns gRPC off")
    _add(
        serve,
        "grpc-server",
        "grpcio",
        choices=["grpcio", "native"],
        help="gRPC transport: grpc.aio, or the runtime's own HTTP/2 server on its event loop "
        "(about half the latency and CPU per call; newer, plaintext only)",
    )
    _add(serve, "poll-interval", 5.0, type=float, help="seconds between repository scans; 0: off")
    _add(serve, "max-body-bytes", 64 * 1024 * 1024, type=int)
    _add(
        serve,
        "max-json-bytes",
        16 * 1024 * 1024,
        type=int,
        help="limit for JSON (a JSON body takes ~13x its size in memory once parsed)",
    )
    _add(
        serve,
        "drain-seconds",
        0.0,
        type=float,
        help="on SIGTERM, keep serving (not ready) this long",
    )
    _add(serve, "shutdown-timeout", 30.0, type=float)
    _add(serve, "header-timeout", 10.0, type=float, help="seconds for a request head to arrive")
    _add(serve, "body-timeout", 30.0, type=float, help="seconds a request body may stall")
    _add(
        serve,
        "cache-dir",
        None,
        type=Path,
        help="writable place for derived files (quantised models)",
    )
    g = serve.add_argument_group("model defaults (a model's config.yaml overrides them)")
    _add(g, "providers", "cpu", help="ordered execution providers, e.g. tensorrt,cuda,cpu")
    _add(g, "intra-op-threads", 0, type=int, help="0: onnxruntime's default")
    _add(g, "inter-op-threads", 0, type=int)
    _add(g, "graph-optimization", "all", choices=["disable", "basic", "extended", "all"])
    _add(g, "quantize", "none", choices=["none", "dynamic_int8"])
    _add(g, "max-batch-size", 1, type=int, help="1: no batching")
    _add(g, "max-batch-delay-ms", 0.0, type=float)
    _add(g, "max-queue", 256, type=int)
    _add(g, "request-timeout-ms", 30000.0, type=float)
    _add(g, "execution", "auto", choices=["auto", "inline", "thread"])
    _add(g, "warmup-runs", 2, type=int)
    _add(g, "cache-entries", 0, type=int, help="result cache size; 0: off")
    _add(g, "version-policy", "latest:1", help="latest:N, all, or specific:1,3")
    _add(g, "fault-error-ratio", 0.0, type=float, help="inject errors into this share of requests")
    _add(g, "fault-latency-ms", 0.0, type=float, help="add this latency to every request")

    fetch = sub.add_parser(
        "fetch", help="copy a model from file://, a path, http(s):// or s3:// into DEST"
    )
    fetch.add_argument("--log-level", default=argparse.SUPPRESS)
    fetch.add_argument("uri")
    fetch.add_argument("dest", type=Path)
    fetch.add_argument(
        "--sha256", default=_env("sha256", None), help="expected checksum of a single file"
    )
    fetch.add_argument(
        "--s3-endpoint", default=_env("s3-endpoint", None), help="S3-compatible endpoint URL"
    )
    fetch.add_argument(
        "--force", action="store_true", help="replace DEST if it holds something else"
    )
    return parser


def version_policy(text: str) -> dict[str, Any]:
    if text == "all":
        return {"all": True}
    kind, _, value = text.partition(":")
    if kind == "latest":
        return {"latest": int(value or 1)}
    if kind == "specific":
        return {"specific": [v for v in value.split(",") if v]}
    raise SystemExit(f"--version-policy: expected latest:N, all or specific:V1,V2, got {text!r}")


def model_defaults(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "version_policy": version_policy(args.version_policy),
        "onnx": {
            "execution_providers": [p.strip() for p in args.providers.split(",") if p.strip()],
            "intra_op_threads": args.intra_op_threads,
            "inter_op_threads": args.inter_op_threads,
            "graph_optimization": args.graph_optimization,
            "quantize": args.quantize,
        },
        "batching": {
            "max_batch_size": args.max_batch_size,
            "max_delay_ms": args.max_batch_delay_ms,
            "max_queue": args.max_queue,
            "timeout_ms": args.request_timeout_ms,
        },
        "execution": args.execution,
        "warmup": {"runs": args.warmup_runs},
        "cache": {"max_entries": args.cache_entries},
        "faults": {
            "error_ratio": args.fault_error_ratio,
            "added_latency_ms": args.fault_latency_ms,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "fetch":
        from modelpilot_runtime.storage import FetchError, fetch

        try:
            fetch(
                args.uri,
                args.dest,
                sha256=args.sha256,
                s3_endpoint=args.s3_endpoint,
                force=args.force,
            )
        except FetchError as exc:
            print(f"fetch failed: {exc}", file=sys.stderr)
            return 1
        return 0

    from modelpilot_runtime.server.app import ServerSettings, run

    models: dict[str, Path] = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--model: expected NAME=PATH, got {item!r}")
        models[name] = Path(path)
    if args.model_repository is None and not models:
        raise SystemExit("serve: give --model-repository or at least one --model NAME=PATH")
    settings = ServerSettings(
        host=args.host,
        http_port=args.http_port,
        grpc_port=None if args.grpc_port < 0 else args.grpc_port,
        grpc_server=args.grpc_server,
        model_repository=args.model_repository,
        models=models,
        poll_interval=args.poll_interval,
        max_body_bytes=args.max_body_bytes,
        max_json_bytes=args.max_json_bytes,
        drain_seconds=args.drain_seconds,
        shutdown_timeout=args.shutdown_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        model_defaults=model_defaults(args),
    )
    if args.cache_dir is not None:
        settings.cache_dir = args.cache_dir
    run(settings)
    return 0
