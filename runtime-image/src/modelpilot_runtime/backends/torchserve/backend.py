"""The TorchServe backend: a `.mar` served by a supervised TorchServe behind loopback HTTP.

It implements the runtime's `Backend` interface, so the protocols, the dynamic batcher, the
cache and the metrics treat a TorchServe version exactly like an ONNX one. What is its own:

- a (possibly batched) call sent as one TorchServe request in the binary format of `wire`
  (with several workers, one request per worker, each with a contiguous share of the rows),
  to the runtime's own handler (`handler`), registered in place of the `.mar`'s: in the
  worker, it hands the `.mar`'s handler the rows as one TorchServe batch of per-row
  requests and answers all of its outputs as tensors. TorchServe's batch aggregator is
  registered with batch size 1 and no delay: batches are formed by the runtime's batcher;
- the handler's errors and TorchServe's into 4xx/5xx answers with their message, with a
  client-side timeout so that nothing hangs;
- supervision: a thread that restarts TorchServe when it dies or stops answering (with
  backoff), renews its keys, and tells the runtime when the version stops and starts serving.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import modelpilot_runtime
from modelpilot_runtime.backends.base import BackendInfo
from modelpilot_runtime.backends.torchserve import wire
from modelpilot_runtime.backends.torchserve.handler import BATCH_SIZE_ENV, ENTRY_POINT
from modelpilot_runtime.backends.torchserve.process import (
    TorchServeError,
    TorchServeProcess,
    torchserve_version,
)
from modelpilot_runtime.config import ModelConfig, TensorDeclaration
from modelpilot_runtime.errors import BackendError, BadRequestError, RejectedError
from modelpilot_runtime.tensors import Array, TensorSpec

log = logging.getLogger(__name__)

MAR_FILE = "model.mar"
PLATFORM = "pytorch_torchserve"

# Supervision cadence: how often the process is checked, how often TorchServe is pinged, and
# how many failed pings in a row count as "not answering".
CHECK_SECONDS = 0.2
PING_SECONDS = 2.0
PING_FAILURES = 3
MAX_BACKOFF_SECONDS = 30.0

HealthListener = Callable[[bool], None]

# For comparisons only (benchmarks/runtime/torchserve.py): "1" sends each row of a batch as a
# TorchServe request of its own, all at once, and registers the model with TorchServe's
# batch aggregator set to the version's batch size and delay, so that TorchServe forms the
# handler's batches (still in the binary format, through the same handler).
SPLIT_ROWS_ENV = "MODELPILOT_TORCHSERVE_SPLIT_ROWS"


def find_mar(version_dir: Path) -> Path:
    """`model.mar` in the version directory, or its only `.mar` file."""
    preferred = version_dir / MAR_FILE
    if preferred.is_file():
        return preferred
    found = sorted(version_dir.glob("*.mar"))
    if len(found) != 1:
        raise BackendError(
            f"{version_dir}: expected {MAR_FILE} (or exactly one .mar file), found "
            f"{', '.join(p.name for p in found) or 'none'}"
        )
    return found[0]


def _spec(decl: TensorDeclaration) -> TensorSpec:
    return TensorSpec(decl.name, decl.datatype, tuple(decl.shape))


class TorchServeBackend:
    """One model version in its own TorchServe instance."""

    def __init__(
        self, model_dir: Path, version_dir: Path, config: ModelConfig, cache_dir: Path
    ) -> None:
        self.model_dir = model_dir
        self.version_dir = version_dir
        self.config = config
        self.settings = config.torchserve
        self.name = model_dir.name
        self.info = BackendInfo(
            platform=PLATFORM, provider="", inputs=[], outputs=[], batchable=False
        )
        self.process: TorchServeProcess | None = None
        self.mar: Path | None = None
        self.healthy = False
        self.restarts = 0
        self._listener: HealthListener | None = None
        self._lock = threading.Lock()  # guards process swaps against readers of its ports
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []  # every thread's, to close
        self._pool: ThreadPoolExecutor | None = None
        self._split_rows = os.environ.get(SPLIT_ROWS_ENV) == "1"
        self._output_specs: list[dict[str, Any]] = []
        self._http_timeout = self.settings.response_timeout_s + 5.0

    # -- Backend interface -----------------------------------------------------------------

    def load(self) -> BackendInfo:
        s = self.settings
        if not s.inputs or not s.outputs:
            raise BackendError(
                f"{self.model_dir}: a TorchServe model declares its inputs and outputs in its "
                "config (torchserve.inputs, torchserve.outputs); a .mar carries no signature"
            )
        self.mar = find_mar(self.version_dir)
        started = time.perf_counter()
        self._start_instance()
        inputs = [_spec(d) for d in s.inputs]
        outputs = [_spec(d) for d in s.outputs]
        self._output_specs = [o.as_metadata() for o in outputs]
        batchable = all(t.shape[0] == -1 for t in (*inputs, *outputs))
        senders = self.config.batching.max_batch_size if self._split_rows else s.workers
        if batchable and senders > 1 and self.config.batching.max_batch_size > 1:
            self._pool = ThreadPoolExecutor(senders - 1, thread_name_prefix=f"ts-{self.name}")
        self.info = BackendInfo(
            platform=PLATFORM,
            provider=f"TorchServe {torchserve_version()}",
            inputs=inputs,
            outputs=outputs,
            batchable=batchable,
            load_seconds=time.perf_counter() - started,
            details={"mar": self.mar.name, "request_format": s.request_format},
        )
        self.healthy = True
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"ts-supervisor-{self.name}", daemon=True
        )
        self._supervisor.start()
        return self.info

    def warmup(self, runs: int, batch_sizes: list[int]) -> None:
        started = time.perf_counter()
        batch1 = 0.0
        for size in batch_sizes:
            feeds = {spec.name: _synthetic(spec, size) for spec in self.info.inputs}
            for _ in range(runs):
                t0 = time.perf_counter()
                try:
                    self.predict(feeds, None)
                except (BackendError, BadRequestError) as exc:
                    # A handler may reject zeros; warm-up then only started the workers.
                    log.warning("%s: warm-up request refused: %s", self.name, exc)
                    return
                if size == 1:
                    batch1 = time.perf_counter() - t0
        self.info.warmup_seconds = time.perf_counter() - started
        self.info.batch1_seconds = batch1

    def predict(self, inputs: dict[str, Array], outputs: list[str] | None) -> dict[str, Array]:
        names = outputs if outputs is not None else [o.name for o in self.info.outputs]
        if not self.info.batchable:
            return self._send(inputs, names, split=False)
        rows = next(iter(inputs.values())).shape[0]
        parts = min(rows if self._split_rows else self.settings.workers, rows)
        if parts <= 1 or self._pool is None:
            # The whole batch in one TorchServe request.
            return self._send(inputs, names, split=True)
        # Several workers: a contiguous share of the rows for each, sent together (the
        # calling thread sends the first), so that they run side by side.
        bounds = [rows * i // parts for i in range(parts + 1)]
        shares = [{n: a[lo:hi] for n, a in inputs.items()} for lo, hi in itertools.pairwise(bounds)]
        futures = [self._pool.submit(self._send, share, names, True) for share in shares[1:]]
        answers = [self._send(shares[0], names, True), *(f.result() for f in futures)]
        return {n: np.concatenate([a[n] for a in answers]) for n in names}

    def unload(self) -> None:
        self._listener = None  # the runtime is done with this version: nobody to tell
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._lock:
            if self.process is not None:
                self.process.stop()
                self.process = None
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._set_health(False)

    # -- health ----------------------------------------------------------------------------

    def set_health_listener(self, listener: HealthListener | None) -> None:
        """`listener(False)` when TorchServe goes down, `listener(True)` once it serves again.

        Called from the supervisor thread.
        """
        self._listener = listener

    def _set_health(self, healthy: bool) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        listener = self._listener
        if listener is not None:
            listener(healthy)

    # -- supervision -----------------------------------------------------------------------

    def _start_instance(self) -> None:
        assert self.mar is not None
        s = self.settings
        b = self.config.batching
        process = TorchServeProcess(
            java=s.java,
            jvm_options=tuple(s.jvm_options),
            response_timeout_s=s.response_timeout_s,
            # TorchServe's own queue holds what the runtime lets through: the runtime's
            # queue bound decides (a batch is one request per worker, or with
            # SPLIT_ROWS_ENV one per row).
            job_queue_size=max(b.max_queue, b.max_batch_size * s.workers) + 1,
            name=self.name,
            env={BATCH_SIZE_ENV: str(b.max_batch_size), "PYTHONPATH": _worker_path()},
        )
        try:
            process.start(s.startup_timeout_s)
            process.register(
                self.mar,
                self.name,
                # Batches are the runtime's: each TorchServe request holds one, and goes
                # to a worker at once, without waiting in TorchServe's batch aggregator.
                batch_size=b.max_batch_size if self._split_rows else 1,
                max_batch_delay_ms=round(b.max_delay_ms) if self._split_rows else 0,
                workers=s.workers,
                timeout=s.startup_timeout_s,
                handler=ENTRY_POINT,
            )
        except BaseException:
            process.stop()
            raise
        with self._lock:
            self.process = process
        log.info(
            "%s: TorchServe %s serves %s (pid %s, inference port %s, %d worker(s))",
            self.name,
            torchserve_version(),
            self.mar.name,
            process.pid,
            process.ports.inference if process.ports else "?",
            s.workers,
        )

    def _supervise(self) -> None:
        last_ping = time.monotonic()
        failures = 0
        while not self._stop.wait(CHECK_SECONDS):
            process = self.process
            if process is None:
                continue
            reason = ""
            if not process.alive():
                code = process.proc.returncode if process.proc else None
                reason = f"TorchServe exited (code {code})"
            elif time.monotonic() - last_ping >= PING_SECONDS:
                last_ping = time.monotonic()
                try:
                    ok = process.ping(timeout=PING_SECONDS)
                except (OSError, http.client.HTTPException):
                    ok = False
                failures = 0 if ok else failures + 1
                if failures >= PING_FAILURES:
                    reason = f"TorchServe did not answer {failures} pings"
                elif ok and process.keys_due():
                    try:
                        process.renew_keys()
                    except (OSError, http.client.HTTPException, TorchServeError) as exc:
                        log.warning("%s: renewing TorchServe keys failed: %s", self.name, exc)
            if reason:
                failures = 0
                self._restart(reason)
                last_ping = time.monotonic()

    def _restart(self, reason: str) -> None:
        log.error("%s: %s; restarting it\n%s", self.name, reason, self._tail())
        self._set_health(False)
        backoff = 1.0
        while not self._stop.is_set():
            with self._lock:
                old, self.process = self.process, None
            if old is not None:
                old.stop(grace=2.0)
            try:
                self._start_instance()
            except (TorchServeError, OSError) as exc:
                log.error("%s: restarting TorchServe failed: %s", self.name, exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            self.restarts += 1
            self._set_health(True)
            return

    def _tail(self) -> str:
        process = self.process
        return process.log_tail() if process is not None else ""

    # -- requests --------------------------------------------------------------------------

    def _connection(self) -> tuple[http.client.HTTPConnection, str, str]:
        """This thread's keep-alive connection to the current instance, its path and key."""
        with self._lock:
            process = self.process
            if process is None or process.ports is None or process.keys is None:
                raise RejectedError(
                    f"model {self.name}: TorchServe is restarting; retry shortly", "not_ready"
                )
            port, key = process.ports.inference, process.keys.inference
        cached = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == port:
            conn: http.client.HTTPConnection = cached[1]
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self._http_timeout)
            with self._lock:
                if cached is not None:
                    cached[1].close()
                    self._connections.remove(cached[1])
                self._connections.append(conn)
            self._local.conn = (port, conn)
        return conn, f"/predictions/{self.name}", key

    def _send(self, tensors: dict[str, Array], names: list[str], split: bool) -> dict[str, Array]:
        """One TorchServe request with `tensors` (a batch, or one worker's share of it); the
        outputs `names` for all of its rows."""
        datatypes = {spec.name: spec.datatype for spec in self.info.inputs}
        body = wire.encode(
            tensors,
            datatypes,
            format=self.settings.request_format,
            split=split,
            outputs=self._output_specs,
            want=names,
        )
        payload = self._post(body)
        try:
            header, outputs = wire.decode(payload)
        except wire.WireError as exc:
            raise BackendError(
                f"model {self.name}: TorchServe's answer is not the runtime handler's ({exc})"
            ) from None
        error = header.get("error")
        if isinstance(error, dict):
            status = int(error.get("status", 500))
            message = str(error.get("message", ""))
            if error.get("source") == "handler":
                raise self._error_for(status, "", message)
            raise BackendError(f"model {self.name}: {message}")
        missing = [n for n in names if n not in outputs]
        if missing:
            raise BackendError(
                f"model {self.name}: TorchServe's answer lacks output(s) {', '.join(missing)}"
            )
        return outputs

    def _post(self, body: bytes) -> bytes:
        for attempt in range(2):
            conn, path, key = self._connection()
            try:
                conn.request(
                    "POST",
                    path,
                    body=body,
                    headers={"Content-Type": wire.CONTENT_TYPE, "Authorization": f"Bearer {key}"},
                )
                resp = conn.getresponse()
                payload = resp.read()
                status = resp.status
            except TimeoutError:
                conn.close()
                raise RejectedError(
                    f"model {self.name}: TorchServe did not answer within "
                    f"{self._http_timeout:.0f} s",
                    "timeout",
                    504,
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                # A kept-alive connection that TorchServe closed: one fresh try.
                if attempt == 0 and isinstance(
                    exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                ):
                    continue
                raise RejectedError(
                    f"model {self.name}: TorchServe is not reachable ({exc}); retry shortly",
                    "not_ready",
                ) from None
            if status == 200:
                return payload
            error_type, message = _error(payload)
            if error_type == "InvalidKeyException" and attempt == 0:
                self._reload_keys()
                continue
            raise self._error_for(status, error_type, message)
        raise BackendError(f"model {self.name}: TorchServe refused the runtime's key")

    def _reload_keys(self) -> None:
        with self._lock:
            if self.process is not None:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    self.process.read_keys()

    def _error_for(self, status: int, error_type: str, message: str) -> Exception:
        where = f"model {self.name} (TorchServe handler)"
        if error_type == "ModelNotFoundException" or (
            status == 503 and error_type == "ServiceUnavailableException"
        ):
            return RejectedError(f"{where}: {message}", "not_ready")
        if 400 <= status < 500:
            # PredictionException(message, code) in a handler: the client's mistake, with
            # the handler's own words.
            return BadRequestError(f"{where}: {message}", status)
        if message.startswith("Worker died"):
            message = (
                "the TorchServe worker died: the handler crashed, or ran past "
                f"response_timeout_s ({self.settings.response_timeout_s} s) and was stopped"
            )
        elif message == "Prediction failed":
            message = "the handler raised an exception (its traceback is in TorchServe's model log)"
        return BackendError(f"{where}: {message} ({status})")


def _error(payload: bytes) -> tuple[str, str]:
    """TorchServe's error type and message from its JSON error body."""
    try:
        data = json.loads(payload)
        if isinstance(data, dict):
            return str(data.get("type", "")), str(data.get("message", ""))
    except ValueError:
        pass
    return "", payload.decode("utf-8", "replace")[:500]


def _worker_path() -> str:
    """PYTHONPATH for TorchServe's workers: where this runtime's package is found first, so
    that they import the runtime's handler however the runtime was started."""
    package_root = str(Path(modelpilot_runtime.__file__).resolve().parent.parent)
    current = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (package_root, current) if p)


def _synthetic(spec: TensorSpec, rows: int) -> Array:
    shape = [
        rows if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(spec.shape)
    ]
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)
