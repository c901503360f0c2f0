"""One TorchServe instance: its private directories, config, Java process, keys and APIs.

`TorchServeProcess` owns a TorchServe frontend (Java) and, through it, the Python workers:
it writes `config.properties` into a private temporary directory (model store, logs, worker
sockets, key file; nothing is written elsewhere, so a read-only root filesystem with a
writable /tmp is enough), binds every API to 127.0.0.1 on free ports, starts Java in its own
process group, waits until TorchServe answers, registers a `.mar` through the management
API and stops the whole group. Supervision (restarts, readiness) is the backend's.

Token authorization stays on (TorchServe 0.12's default): in a pod, sidecars share the
loopback interface, so loopback-only is not enough to keep them off the management API. The
keys come from the `key_file.json` TorchServe writes into its working directory (mode 0600),
and are renewed with the API key before they expire.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Minutes an inference or management key lives; renewed at half of it.
TOKEN_MINUTES = 60


# TorchServe's own log4j2.xml logs several debug and info lines per request, each twice (its
# frontend logger is additive). This one keeps warnings and errors from the frontend, the
# workers' output (handler tracebacks land there), no access or metrics logs, and bounds
# every file, so a long-running pod does not fill its /tmp.
LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </Console>
    <RollingFile name="ts_log" fileName="${env:LOG_LOCATION}/ts_log.log"
                 filePattern="${env:LOG_LOCATION}/ts_log.%i.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="10 MB"/></Policies>
      <DefaultRolloverStrategy max="1"/>
    </RollingFile>
    <RollingFile name="model_log" fileName="${env:LOG_LOCATION}/model_log.log"
                 filePattern="${env:LOG_LOCATION}/model_log.%i.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="10 MB"/></Policies>
      <DefaultRolloverStrategy max="1"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_LOG" level="info" additivity="false">
      <AppenderRef ref="model_log"/>
    </Logger>
    <Logger name="org.pytorch.serve" level="warn" additivity="false">
      <AppenderRef ref="ts_log"/>
    </Logger>
    <Root level="warn">
      <AppenderRef ref="STDOUT"/>
    </Root>
  </Loggers>
</Configuration>
"""


class TorchServeError(Exception):
    """TorchServe did not start, did not answer, or refused a management call."""


@dataclass(slots=True, frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int
    worker: int  # first worker's number: names its Unix socket, never bound as a TCP port


@dataclass(slots=True, frozen=True)
class Keys:
    inference: str
    management: str
    api: str


# AF_UNIX paths hold at most 107 bytes; a worker socket is <base>/<instance dir, up to 43
# bytes>/tmp/.ts.sock.NNNN (18 bytes).
_SOCKET_PATH_MAX = 107
_INSTANCE_SUFFIX = 43 + 18 + 2


def _short_tempdir() -> str | None:
    """The temp folder, unless its path is too long for the worker sockets under it (a deep
    TMPDIR), then the first writable short one; None keeps tempfile's default."""
    if len(tempfile.gettempdir()) + _INSTANCE_SUFFIX <= _SOCKET_PATH_MAX:
        return None
    for candidate in ("/tmp", "/dev/shm", "/var/tmp"):
        if os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; held together so that no two are the same."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def torchserve_home() -> Path:
    """The directory holding the `ts` package (TorchServe's `model_server_home`)."""
    # Found, not imported: importing `ts` leaves its version file open.
    spec = importlib.util.find_spec("ts")
    if spec is None or spec.origin is None:
        raise TorchServeError("TorchServe is not installed (the `torchserve` extra)")
    return Path(spec.origin).resolve().parent.parent


def torchserve_version() -> str:
    # From the distribution's metadata: `ts.version` leaves its version file open.
    try:
        return importlib.metadata.version("torchserve")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - extra not installed
        return "unknown"


class TorchServeProcess:
    """A TorchServe on loopback in a private directory; `start`, `register`, `stop`."""

    def __init__(
        self,
        *,
        java: str = "java",
        python: str = sys.executable,
        jvm_options: tuple[str, ...] = (),
        response_timeout_s: int = 60,
        job_queue_size: int = 256,
        max_request_bytes: int = 64 * 1024 * 1024,
        name: str = "model",
        env: dict[str, str] | None = None,
    ) -> None:
        self.java = java
        self.python = python
        self.jvm_options = jvm_options
        self.response_timeout_s = response_timeout_s
        self.job_queue_size = job_queue_size
        self.max_request_bytes = max_request_bytes
        self.name = name
        self.env = dict(env or {})  # for Java and, through it, the workers
        self.root: Path | None = None
        self.ports: Ports | None = None
        self.keys: Keys | None = None
        self.keys_read_at = 0.0
        self.proc: subprocess.Popen[bytes] | None = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Start Java and wait until the inference API answers `/ping` (or raise)."""
        # A short base directory: worker sockets live under it and Unix socket paths are
        # limited to 107 bytes.
        self.root = Path(
            tempfile.mkdtemp(prefix=f"modelpilot-ts-{self.name[:20]}-", dir=_short_tempdir())
        )
        for sub in ("model-store", "logs", "tmp"):
            (self.root / sub).mkdir()
        p = free_ports(5)
        # Worker numbers only name Unix sockets (tmp/.ts.sock.N) inside this instance's own
        # directory, so a fixed base cannot collide with another instance.
        self.ports = Ports(p[0], p[1], p[2], p[3], p[4], worker=9000)
        config = self.root / "config.properties"
        config.write_text(self._config_text())
        log4j = self.root / "log4j2.xml"
        log4j.write_text(LOG4J2_XML)
        home = torchserve_home()
        cmd = [
            self.java,
            f"-Dmodel_server_home={home}",
            f"-Dlog4j.configurationFile=file://{log4j}",
            f"-Djava.io.tmpdir={self.root / 'tmp'}",
            *self.jvm_options,
            "-cp",
            f".:{home / 'ts' / 'frontend' / '*'}",
            "org.pytorch.serve.ModelServer",
            "--python",
            self.python,
            "-f",
            str(config),
            "-ncs",  # no config snapshots: nothing restores from them here
        ]
        env = dict(os.environ)
        env.update(
            LOG_LOCATION=str(self.root / "logs"),
            METRICS_LOCATION=str(self.root / "logs"),
            TEMP=str(self.root / "tmp"),
            TMPDIR=str(self.root / "tmp"),
            # Workers must not read a stray TorchServe config from the environment.
            TS_CONFIG_FILE=str(config),
        )
        env.update(self.env)
        stdout = (self.root / "logs" / "stdout.log").open("wb")
        try:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group: Java and its Python workers
            )
        except OSError as exc:
            raise TorchServeError(f"cannot start TorchServe ({self.java}): {exc}") from exc
        finally:
            stdout.close()
        self._wait_started(timeout)

    def _config_text(self) -> str:
        assert self.ports is not None
        assert self.root is not None
        p = self.ports
        lines = {
            "inference_address": f"http://127.0.0.1:{p.inference}",
            "management_address": f"http://127.0.0.1:{p.management}",
            "metrics_address": f"http://127.0.0.1:{p.metrics}",
            # TorchServe 0.12 always starts its gRPC servers: keep them on loopback too.
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(p.grpc_inference),
            "grpc_management_port": str(p.grpc_management),
            "initial_worker_port": str(p.worker),
            "model_store": str(self.root / "model-store"),
            # Registration goes through the management API (off by default since 0.11).
            "enable_model_api": "true",
            "token_expiration_min": str(TOKEN_MINUTES),
            "metrics_mode": "prometheus",
            "enable_metrics_api": "true",
            # The runtime reports its own process; TorchServe's collector would start a
            # Python process every minute to sample the host.
            "disable_system_metrics": "true",
            "default_response_timeout": str(self.response_timeout_s),
            "job_queue_size": str(self.job_queue_size),
            "max_request_size": str(self.max_request_bytes),
            "max_response_size": str(self.max_request_bytes),
            "install_py_dep_per_model": "false",
            "default_workers_per_model": "1",
            "number_of_netty_threads": "2",
            "netty_client_threads": "2",
            "async_logging": "true",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise TorchServeError(f"TorchServe exited during start-up: {self.log_tail()}")
            try:
                if self.keys is None:
                    self.read_keys()
                if self.ping():
                    return
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TorchServeError(
                    f"TorchServe did not answer within {timeout:.0f} s: {self.log_tail()}"
                )
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group (Java and workers), SIGKILL after `grace` seconds."""
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # Workers that outlived Java (they notice the closed socket and exit soon after)
            # share its group; make sure none is left.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.proc = None
        self.keys = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of TorchServe's own log and its workers' log, for error messages."""
        if self.root is None:
            return "(no logs)"
        parts = []
        for name in ("stdout.log", "ts_log.log", "model_log.log"):
            path = self.root / "logs" / name
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip().splitlines()
                if text:
                    parts.append(f"--- {name}\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) or "(no logs)"

    # -- keys ------------------------------------------------------------------------------

    def read_keys(self) -> Keys:
        assert self.root is not None
        data = json.loads((self.root / "key_file.json").read_text())
        self.keys = Keys(
            inference=data["inference"]["key"],
            management=data["management"]["key"],
            api=data["API"]["key"],
        )
        self.keys_read_at = time.monotonic()
        return self.keys

    def renew_keys(self) -> None:
        """Ask for new inference and management keys (the API key does not expire)."""
        assert self.keys is not None
        for kind in ("inference", "management"):
            status, body = self.management("POST", f"/token?type={kind}", key=self.keys.api)
            if status != 200:
                raise TorchServeError(f"renewing the {kind} key: {status} {body[:200]!r}")
        self.read_keys()

    def keys_due(self) -> bool:
        return time.monotonic() - self.keys_read_at > TOKEN_MINUTES * 60 / 2

    # -- APIs ------------------------------------------------------------------------------

    def _call(
        self,
        port: int,
        method: str,
        path: str,
        key: str | None,
        timeout: float,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def ping(self, timeout: float = 5.0) -> bool:
        assert self.ports is not None
        assert self.keys is not None
        status, body = self._call(
            self.ports.inference, "GET", "/ping", self.keys.inference, timeout
        )
        return status == 200 and b"Healthy" in body

    def management(
        self, method: str, path: str, key: str | None = None, timeout: float = 30.0
    ) -> tuple[int, bytes]:
        assert self.ports is not None
        assert self.keys is not None
        return self._call(self.ports.management, method, path, key or self.keys.management, timeout)

    def metrics_text(self, timeout: float = 5.0) -> str:
        """TorchServe's own Prometheus metrics (the metrics API takes no key)."""
        assert self.ports is not None
        status, body = self._call(self.ports.metrics, "GET", "/metrics", None, timeout)
        if status != 200:
            raise TorchServeError(f"TorchServe metrics answered {status}")
        return body.decode("utf-8", "replace")

    def register(
        self,
        mar: Path,
        model_name: str,
        *,
        batch_size: int,
        max_batch_delay_ms: int,
        workers: int,
        timeout: float,
        handler: str | None = None,
    ) -> None:
        """Put the `.mar` into the model store and register it; returns once workers run.

        `handler` replaces the handler the `.mar`'s manifest names (which the worker still
        reads from the manifest)."""
        assert self.root is not None
        target = self.root / "model-store" / f"{model_name}.mar"
        if not target.exists():
            target.symlink_to(mar.resolve())
        params: dict[str, str | int | float] = {}
        if handler is not None:
            params["handler"] = handler
        query = urllib.parse.urlencode(
            {
                **params,
                "url": target.name,
                "model_name": model_name,
                "batch_size": batch_size,
                "max_batch_delay": max_batch_delay_ms,
                "initial_workers": workers,
                "response_timeout": self.response_timeout_s,
                "synchronous": "true",
            }
        )
        status, body = self.management("POST", f"/models?{query}", timeout=timeout)
        if status != 200:
            raise TorchServeError(
                f"registering {mar.name} failed ({status}): {_message(body)}\n{self.log_tail()}"
            )


def _message(body: bytes) -> str:
    """TorchServe's error message from its JSON error body, or the body itself."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and "message" in data:
            return str(data["message"])
    except ValueError:
        pass
    return body.decode("utf-8", "replace")[:500]
