"""The TorchServe backend: a `.mar` served by a supervised TorchServe behind loopback HTTP.

It implements the runtime's `Backend` interface, so the protocols, the dynamic batcher, the
cache and the metrics treat a TorchServe version exactly like an ONNX one. What is its own:

- the translation between the runtime's named tensors and TorchServe requests: every row of
  a (possibly batched) call becomes one TorchServe request, sent concurrently, so that
  TorchServe's batch aggregator (registered with the version's `max_batch_size` and
  `max_delay_ms`) hands the handler the same rows as one batch;
- handler answers turned into tensors, and TorchServe's errors into 4xx/5xx answers with
  TorchServe's message, with a client-side timeout so that nothing hangs;
- supervision: a thread that restarts TorchServe when it dies or stops answering (with
  backoff), renews its keys, and tells the runtime when the version stops and starts serving.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from modelpilot_runtime.backends.base import BackendInfo
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
        batchable = all(t.shape[0] == -1 for t in (*inputs, *outputs))
        if batchable and self.config.batching.max_batch_size > 1:
            self._pool = ThreadPoolExecutor(
                self.config.batching.max_batch_size - 1, thread_name_prefix=f"ts-{self.name}"
            )
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
            return self._stack([self._send(inputs)], names)
        rows = next(iter(inputs.values())).shape[0]
        slices = [{n: a[i : i + 1] for n, a in inputs.items()} for i in range(rows)]
        if rows == 1 or self._pool is None:
            answers = [self._send(s) for s in slices]
        else:
            # The calling thread sends the first row itself; the pool sends the rest, so that
            # TorchServe sees them arrive together and batches them.
            futures = [self._pool.submit(self._send, s) for s in slices[1:]]
            first = self._send(slices[0])
            answers = [first, *(f.result() for f in futures)]
        return self._stack(answers, names)

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
            # queue bound decides, TorchServe only needs room for a full batch per worker.
            job_queue_size=max(b.max_queue, b.max_batch_size * s.workers) + 1,
            name=self.name,
        )
        try:
            process.start(s.startup_timeout_s)
            process.register(
                self.mar,
                self.name,
                batch_size=b.max_batch_size,
                # TorchServe takes whole milliseconds; with 0 it still batches whatever is
                # already queued.
                max_batch_delay_ms=round(b.max_delay_ms),
                workers=s.workers,
                timeout=s.startup_timeout_s,
            )
        except BaseException:
            process.stop()
            raise
        with self._lock:
            self.process = process
        log.info(
            "%s: TorchServe %s serves %s (pid %s, inference port %s, batch %d, delay %d ms)",
            self.name,
            torchserve_version(),
            self.mar.name,
            process.pid,
            process.ports.inference if process.ports else "?",
            b.max_batch_size,
            round(b.max_delay_ms),
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

    def _body(self, row: dict[str, Array]) -> tuple[bytes, str]:
        if self.settings.request_format == "raw":
            (arr,) = row.values()
            item = arr.reshape(-1)[0] if arr.size else b""
            raw = item if isinstance(item, bytes) else str(item).encode()
            return raw, "application/octet-stream"
        tensors = []
        for spec in self.info.inputs:
            arr = row[spec.name]
            if spec.datatype == "BYTES":
                data: list[Any] = [
                    v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    for v in arr.reshape(-1)
                ]
            else:
                data = arr.reshape(-1).tolist()
            tensors.append(
                {
                    "name": spec.name,
                    "datatype": spec.datatype,
                    "shape": list(arr.shape),
                    "data": data,
                }
            )
        return json.dumps({"inputs": tensors}).encode(), "application/json"

    def _send(self, row: dict[str, Array]) -> dict[str, Array]:
        body, content_type = self._body(row)
        for attempt in range(2):
            conn, path, key = self._connection()
            try:
                conn.request(
                    "POST",
                    path,
                    body=body,
                    headers={"Content-Type": content_type, "Authorization": f"Bearer {key}"},
                )
                resp = conn.getresponse()
                payload = resp.read()
                status = resp.status
                answer_type = resp.getheader("Content-Type", "")
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
                return self._decode(payload, answer_type)
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

    def _decode(self, payload: bytes, content_type: str) -> dict[str, Array]:
        outputs = self.info.outputs
        if "json" not in content_type:
            with contextlib.suppress(ValueError):
                return self._from_json(json.loads(payload))
            if len(outputs) == 1 and outputs[0].datatype == "BYTES":
                return {outputs[0].name: np.array([payload], dtype=object)}
            raise BackendError(
                f"model {self.name}: the handler answered {len(payload)} bytes of "
                f"{content_type or 'unknown type'}, not JSON"
            )
        try:
            return self._from_json(json.loads(payload))
        except ValueError as exc:
            raise BackendError(f"model {self.name}: the handler's answer: {exc}") from None

    def _from_json(self, data: Any) -> dict[str, Array]:
        specs = {s.name: s for s in self.info.outputs}
        if isinstance(data, dict) and isinstance(data.get("outputs"), list):
            found: dict[str, Array] = {}
            for item in data["outputs"]:
                name = item.get("name") if isinstance(item, dict) else None
                if name in specs:
                    found[name] = _tensor(specs[name], item.get("data"), item.get("shape"))
            missing = [n for n in specs if n not in found]
            if missing:
                raise BackendError(
                    f"model {self.name}: the handler's answer lacks output(s) "
                    f"{', '.join(map(repr, missing))}"
                )
            return found
        if len(specs) == 1:
            (spec,) = specs.values()
            return {spec.name: _tensor(spec, data, None)}
        raise BackendError(
            f"model {self.name}: the handler answered a bare value but the config declares "
            f'{len(specs)} outputs; answer {{"outputs": [{{"name", "data"}}, ...]}}'
        )

    def _stack(self, answers: list[dict[str, Array]], names: list[str]) -> dict[str, Array]:
        if len(answers) == 1:
            return {n: answers[0][n] for n in names}
        try:
            return {n: np.concatenate([a[n] for a in answers]) for n in names}
        except ValueError as exc:
            raise BackendError(
                f"model {self.name}: the handler's answers for the rows of a batch do not "
                f"stack ({exc})"
            ) from None


def _tensor(spec: TensorSpec, data: Any, shape: Any) -> Array:
    """A handler's answer for one output, as the declared datatype and shape."""
    if data is None:
        raise BackendError(f"output {spec.name!r}: the handler's answer has no data")
    dtype = spec.dtype
    try:
        if spec.datatype == "BYTES":
            flat = np.array(
                [
                    v.encode() if isinstance(v, str) else v
                    for v in np.ravel(np.array(data, dtype=object))
                ],
                dtype=object,
            )
        else:
            flat = np.asarray(data, dtype=dtype).reshape(-1)
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            return flat.reshape(shape)
        # No shape in the answer: the declared one, with the batch dimension first.
        dims = list(spec.shape)
        if dims[0] == -1:
            dims[0] = 1
        if dims.count(-1) <= 1:
            return flat.reshape(dims)
        return flat.reshape(1, -1)
    except (ValueError, TypeError) as exc:
        raise BackendError(f"output {spec.name!r}: the handler's answer: {exc}") from None


def _error(payload: bytes) -> tuple[str, str]:
    """TorchServe's error type and message from its JSON error body."""
    try:
        data = json.loads(payload)
        if isinstance(data, dict):
            return str(data.get("type", "")), str(data.get("message", ""))
    except ValueError:
        pass
    return "", payload.decode("utf-8", "replace")[:500]


def _synthetic(spec: TensorSpec, rows: int) -> Array:
    shape = [
        rows if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(spec.shape)
    ]
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)
