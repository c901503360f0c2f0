"""Fixtures for the runtime tests: sample models, and servers run in a background thread
(each with its own event loop and free ports) or as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelpilot_runtime.samples import write_repository
from modelpilot_runtime.server.app import Runtime, ServerSettings

TEST_MODELS = ["tiny", "mlp", "multi", "echo"]


@pytest.fixture(scope="session")
def sample_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("samples"), TEST_MODELS)


@dataclass
class RunningServer:
    runtime: Runtime
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.runtime.grpc_port}"

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self.thread.is_alive():  # already stopped (a test stopped it itself)
            return
        self.loop.call_soon_threadsafe(self.runtime.request_stop)
        self.thread.join(30)


@contextlib.contextmanager
def run_server(**overrides: Any) -> Iterator[RunningServer]:
    """A server on 127.0.0.1 with ephemeral ports, in a thread with its own loop."""
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "poll_interval": 0,
    }
    settings = ServerSettings(**{**fields, **overrides})
    loop = asyncio.new_event_loop()
    runtime_box: list[Runtime] = []
    started = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def serve() -> None:
            runtime = Runtime(settings)
            runtime_box.append(runtime)
            task = loop.create_task(runtime.serve(install_signals=False))
            await runtime.started.wait()
            started.set()
            await task

        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.wait(60)
    if errors:
        raise errors[0]
    server = RunningServer(runtime_box[0], loop, thread)
    try:
        yield server
    finally:
        server.stop()
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def server(sample_repo: Path) -> Iterator[RunningServer]:
    with run_server(model_repository=sample_repo) as srv:
        yield srv


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll until `predicate()` is true; fail (not a timing assert: a hang guard) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@dataclass
class Subprocess:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def start_subprocess(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> Subprocess:
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = _popen(args, http_port, grpc_port, out, env)
    sub = Subprocess(proc, http_port, grpc_port, log)
    return _wait_ready(sub)


def _popen(
    args: list[str], http_port: int, grpc_port: int, out: Any, env: dict[str, str] | None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelpilot_runtime",
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            *args,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def _wait_ready(sub: Subprocess) -> Subprocess:
    proc, log = sub.proc, sub.log

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(sub.url + "/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=60)
    return sub


def send_while_held(srv: RunningServer, path: str, bodies: list[Any]) -> list[tuple[int, Any]]:
    """POST every body (JSON) on its own connection while the server's loop is held, then let
    it go and read the answers (status, JSON): the requests reach the server together, as
    they would behind a busy model, whatever the client's timing."""
    gate = threading.Event()
    srv.loop.call_soon_threadsafe(gate.wait, 30)
    conns = []
    try:
        for doc in bodies:
            conn = http.client.HTTPConnection("127.0.0.1", srv.runtime.http_port, timeout=30)
            conns.append(conn)
            conn.request("POST", path, json.dumps(doc), {"Content-Type": "application/json"})
    finally:
        gate.set()
    answers = []
    for conn in conns:
        response = conn.getresponse()
        answers.append((response.status, json.loads(response.read())))
        conn.close()
    return answers
