"""The server's lifecycle: listen, load the repository, serve, and stop gracefully.

Start-up: the HTTP and gRPC listeners open first (liveness answers at once, readiness says
503), then every model version is loaded and warmed up, then readiness turns 200 and the
repository is polled for changes.

Shutdown (SIGTERM or SIGINT): readiness turns 503 at once; for `drain_seconds` the server
keeps serving normally, so load balancers notice before connections close (Kubernetes
removes a terminating pod's endpoints asynchronously); then it stops accepting connections,
answers every request it has received, tells each keep-alive connection `Connection: close`,
stops gRPC with the same grace, unloads the models and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpilot_runtime.metrics import Metrics
from modelpilot_runtime.repository.repository import ModelRepository
from modelpilot_runtime.server.httpserver import HttpServer
from modelpilot_runtime.server.routes import HttpApi, RuntimeState

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int | None = 8081  # None: no gRPC
    grpc_server: str = "grpcio"  # grpc.aio, or "native": the own HTTP/2 transport (grpc_h2)
    model_repository: Path | None = None
    models: dict[str, Path] = field(default_factory=dict)
    poll_interval: float = 5.0  # seconds; 0 turns polling off
    max_body_bytes: int = 64 * 1024 * 1024
    max_json_bytes: int = 16 * 1024 * 1024  # JSON parses to ~13x its size in memory
    drain_seconds: float = 0.0
    shutdown_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    header_timeout: float = 10.0  # seconds for a request line and headers to arrive
    body_timeout: float = 30.0  # seconds a request body may stall
    cache_dir: Path = field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "modelpilot-runtime"
    )
    model_defaults: dict[str, Any] = field(default_factory=dict)


class Runtime:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.repository = ModelRepository(
            self.metrics,
            settings.cache_dir,
            settings.model_defaults,
            root=settings.model_repository,
            models=settings.models,
            poll_interval=settings.poll_interval,
        )
        self.state = RuntimeState(self.repository, self.metrics)
        self.http = HttpServer(
            HttpApi(self.state, max_json_bytes=settings.max_json_bytes),
            max_body=settings.max_body_bytes,
            keepalive_timeout=settings.keepalive_timeout,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
        )
        self.grpc: Any = None
        self.http_port = 0
        self.grpc_port = 0
        self._poller: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.started = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        self.http_port = await self.http.start(s.host, s.http_port)
        log.info("HTTP (v2, TF-Serving REST, /metrics) on %s:%d", s.host, self.http_port)
        if s.grpc_port is not None:
            from modelpilot_runtime.server.grpc_service import start_grpc

            self.grpc, self.grpc_port = await start_grpc(
                self.state, s.host, s.grpc_port, s.max_body_bytes, s.grpc_server
            )
            log.info(
                "gRPC (inference.GRPCInferenceService, %s) on %s:%d",
                s.grpc_server,
                s.host,
                self.grpc_port,
            )
        await self.repository.sync()
        # Everything allocated so far lives as long as the server: keep the collector off it.
        gc.collect()
        gc.freeze()
        if s.poll_interval > 0:
            self._poller = asyncio.get_running_loop().create_task(self.repository.run_polling())
        log.info(
            "ready: %s",
            ", ".join(f"{i['name']}/{i['version']} {i['state']}" for i in self.repository.index()),
        )
        self.started.set()

    def request_stop(self) -> None:
        self.state.draining = True
        self._stop.set()

    async def serve(self, install_signals: bool = True) -> None:
        """Start, serve until asked to stop (signal or `request_stop`), stop gracefully."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        s = self.settings
        self.state.draining = True
        log.info("shutting down: readiness off, draining for %.1fs", s.drain_seconds)
        if s.drain_seconds > 0:
            await asyncio.sleep(s.drain_seconds)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        grpc_stop = self.grpc.stop(s.shutdown_timeout) if self.grpc is not None else None
        await self.http.stop(s.shutdown_timeout)
        if grpc_stop is not None:
            await grpc_stop
        await self.repository.close()
        log.info("stopped")


def run(settings: ServerSettings) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency on Linux
        pass

    async def main() -> None:
        await Runtime(settings).serve()

    asyncio.run(main())
