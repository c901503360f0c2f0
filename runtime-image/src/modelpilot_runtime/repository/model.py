"""One served model version: its backend, scheduler, cache, input checks and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from modelpilot_runtime.backends.base import Backend, BackendInfo, create_backend
from modelpilot_runtime.batching.scheduler import (
    DirectScheduler,
    DynamicBatcher,
    Outputs,
    Runner,
    Scheduler,
)
from modelpilot_runtime.cache import ResultCache, request_key
from modelpilot_runtime.config import ModelConfig
from modelpilot_runtime.errors import BackendError, BadRequestError, RejectedError
from modelpilot_runtime.metrics import Metrics
from modelpilot_runtime.tensors import NUMPY_TO_V2, Array, TensorSpec

log = logging.getLogger(__name__)

# Below this batch-1 run time, handing the run to a thread costs more than it frees the loop.
INLINE_BELOW_SECONDS = 0.0005

REJECT_REASONS = ("queue_full", "timeout", "not_ready", "shutdown", "worker_failed")

LOADING, READY, UNLOADING, UNLOADED, FAILED = "LOADING", "READY", "UNLOADING", "UNLOADED", "FAILED"
# A loaded version whose backend lost its model server (a TorchServe being restarted).
UNAVAILABLE = "UNAVAILABLE"


class ServedVersion:
    def __init__(
        self,
        model: str,
        version: str,
        model_dir: Path,
        version_dir: Path,
        config: ModelConfig,
        metrics: Metrics,
        cache_dir: Path,
    ) -> None:
        self.model = model
        self.version = version
        self.model_dir = model_dir
        self.version_dir = version_dir
        self.config = config
        self.metrics = metrics
        self.vm = metrics.for_version(model, version)
        self.cache_dir = cache_dir
        self.state = LOADING
        self.reason = ""
        self.backend: Backend | None = None
        self.info: BackendInfo | None = None
        self.scheduler: Scheduler | None = None
        self.fast = False  # inline, unbatched, no faults: answered without a task
        # Inline and batched, no faults: a request that finds the batcher idle is answered
        # like a `fast` one (see `runs_now`).
        self._batched_now: DynamicBatcher | None = None
        self.cache: ResultCache | None = None
        self.inflight = 0
        self._idle: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inputs: dict[str, TensorSpec] = {}
        self._outputs: set[str] = set()
        self._class_children: dict[int, Any] = {}
        self._class_output: str | None = None
        self.stamp = version_stamp(version_dir)
        # The stamp of a changed copy that failed to load while this one kept serving: not
        # tried again until the files change once more.
        self.failed_stamp: Stamp | None = None
        self._ready_gauge_provider = ""
        metrics.model_ready.labels(model, version, "").set(0)

    # -- loading (worker thread) -------------------------------------------------------------

    def load_blocking(self) -> None:
        started = time.perf_counter()
        backend = create_backend(self.model_dir, self.version_dir, self.config, self.cache_dir)
        info = backend.load()
        load_seconds = time.perf_counter() - started
        sizes = [1]
        if self.config.batching.enabled and info.batchable:
            sizes.append(self.config.batching.max_batch_size)
        backend.warmup(self.config.warmup.runs, sizes)
        self.backend, self.info = backend, info
        m = self.metrics
        m.load_duration.labels(self.model, self.version, "load").set(load_seconds)
        m.load_duration.labels(self.model, self.version, "warmup").set(info.warmup_seconds)

    def activate(self) -> None:
        """Build the scheduler on the event loop and start serving."""
        assert self.backend is not None
        assert self.info is not None
        info, cfg = self.info, self.config
        self._inputs = {s.name: s for s in info.inputs}
        self._outputs = {s.name for s in info.outputs}
        self._class_output = self._find_class_output(info)
        if cfg.execution == "inline":
            inline = True
        elif cfg.execution == "thread":
            inline = False
        else:
            inline = 0 < info.batch1_seconds < INLINE_BELOW_SECONDS
        if not inline:
            self._executor = ThreadPoolExecutor(
                1, thread_name_prefix=f"{self.model}-{self.version}"
            )
        runner = Runner(
            self.backend,
            self.vm,
            inline,
            self._executor,
            self._count_classes if self._class_output else None,
            self._class_output,
        )
        batching = cfg.batching
        if batching.enabled and not info.batchable:
            log.warning(
                "%s/%s: inputs or outputs have a fixed first dimension; batching is off",
                self.model,
                self.version,
            )
        if batching.enabled and info.batchable:
            batcher = DynamicBatcher(runner, batching)
            batcher.start()
            self.scheduler = batcher
        else:
            self.scheduler = DirectScheduler(runner, batching)
        if cfg.cache.max_entries > 0:
            self.cache = ResultCache(cfg.cache.max_entries)
        # The fast path skips the state check, so a backend that can lose its model server
        # (and so readiness) always takes the checked path.
        plain = (
            inline and not cfg.faults.active and not hasattr(self.backend, "set_health_listener")
        )
        self.fast = plain and isinstance(self.scheduler, DirectScheduler)
        if plain and isinstance(self.scheduler, DynamicBatcher):
            self._batched_now = self.scheduler
        self._idle = asyncio.Event()
        self._idle.set()
        # Every series exists from the start, so rate() over them never sees a gap.
        for reason in REJECT_REASONS:
            self.metrics.rejected.labels(self.model, self.version, reason)
        if self.cache is not None:
            self.vm.cache_hit.inc(0)
            self.vm.cache_miss.inc(0)
        self.state = READY
        listen = getattr(self.backend, "set_health_listener", None)
        if listen is not None:
            loop = asyncio.get_running_loop()
            listen(lambda healthy: loop.call_soon_threadsafe(self._backend_health, healthy))
        m = self.metrics
        m.model_ready.remove(self.model, self.version, "")
        self._ready_gauge_provider = info.provider
        self.mark_ready()
        log.info(
            "%s/%s ready on %s (load %.2fs, warm-up %.2fs, %s, %s)",
            self.model,
            self.version,
            info.provider,
            info.load_seconds,
            info.warmup_seconds,
            f"batching up to {batching.max_batch_size}"
            if isinstance(self.scheduler, DynamicBatcher)
            else "no batching",
            "inline" if inline else "worker thread",
        )

    def mark_ready(self) -> None:
        self.metrics.model_ready.labels(self.model, self.version, self._ready_gauge_provider).set(1)

    def _backend_health(self, healthy: bool) -> None:
        """The backend's model server went away (False) or serves again (True)."""
        gauge = self.metrics.model_ready.labels(
            self.model, self.version, self._ready_gauge_provider
        )
        if not healthy and self.state == READY:
            self.state, self.reason = UNAVAILABLE, "the backend's model server is restarting"
            gauge.set(0)
            log.warning("%s/%s: not ready: %s", self.model, self.version, self.reason)
        elif healthy and self.state == UNAVAILABLE:
            self.state, self.reason = READY, ""
            gauge.set(1)
            log.info("%s/%s: ready again", self.model, self.version)

    def fail(self, reason: str) -> None:
        self.state = FAILED
        self.reason = reason
        self.metrics.model_ready.labels(self.model, self.version, "").set(0)

    def _find_class_output(self, info: BackendInfo) -> str | None:
        wanted = self.config.classification.output
        if wanted == "none":
            return None
        candidates = [
            o for o in info.outputs if o.datatype in ("FP16", "FP32", "FP64") and len(o.shape) == 2
        ]
        if wanted != "auto":
            candidates = [o for o in info.outputs if o.name == wanted]
        elif len(candidates) != 1:
            return None  # ambiguous: say which output in the config
        for spec in candidates:
            if 0 < spec.shape[1] <= self.config.classification.max_classes:
                return spec.name
        return None

    def _count_classes(self, results: Outputs) -> None:
        assert self._class_output is not None
        scores = results.get(self._class_output)
        if (
            scores is None
            or scores.ndim != 2
            or scores.shape[1] > self.config.classification.max_classes
        ):
            return
        if scores.shape[0] == 1:
            counts: dict[int, int] = {int(scores.argmax()): 1}
        else:
            idx, n = np.unique(scores.argmax(axis=1), return_counts=True)
            counts = dict(zip(idx.tolist(), n.tolist(), strict=True))
        children = self._class_children
        for cls, count in counts.items():
            child = children.get(cls)
            if child is None:
                child = self.metrics.prediction_class.labels(self.model, self.version, str(cls))
                children[cls] = child
            child.value += count

    # -- serving (event loop) ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def input_specs(self) -> list[TensorSpec]:
        return self.info.inputs if self.info else []

    @property
    def output_specs(self) -> list[TensorSpec]:
        return self.info.outputs if self.info else []

    def check(self, inputs: dict[str, Array], outputs: list[str] | None) -> int:
        """Validate a request against the model's metadata; the rows (batch size) it has."""
        specs = self._inputs
        if len(inputs) != len(specs) or inputs.keys() != specs.keys():
            missing = [n for n in specs if n not in inputs]
            unknown = [n for n in inputs if n not in specs]
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
            if unknown:
                parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
            raise BadRequestError(
                f"{'; '.join(parts)}; the model takes {', '.join(map(repr, specs))}"
            )
        rows = -1
        for name, arr in inputs.items():
            spec = specs[name]
            if arr.dtype != spec.dtype and not (
                spec.datatype == "BYTES" and arr.dtype.kind in "OSU"
            ):
                got = NUMPY_TO_V2.get(arr.dtype, str(arr.dtype))
                raise BadRequestError(
                    f"input {name!r}: datatype {got} does not match the model's {spec.datatype}"
                )
            if spec.datatype == "BYTES":
                inputs[name] = arr = _as_text(arr, name)
            shape = arr.shape
            if len(shape) != len(spec.shape):
                raise BadRequestError(
                    f"input {name!r}: shape {list(shape)} has {len(shape)} dimensions, "
                    f"the model expects {len(spec.shape)} ({list(spec.shape)}, -1 is any size)"
                )
            for got_dim, want in zip(shape, spec.shape, strict=True):
                if want != -1 and got_dim != want:
                    raise BadRequestError(
                        f"input {name!r}: shape {list(shape)} does not match the model's "
                        f"{list(spec.shape)} (-1 is any size)"
                    )
            if shape:
                if shape[0] == 0 and self.info is not None and self.info.batchable:
                    raise BadRequestError(f"input {name!r}: the batch is empty (first dimension 0)")
                if rows == -1:
                    rows = shape[0]
                elif shape[0] != rows and self.info is not None and self.info.batchable:
                    raise BadRequestError(
                        f"input {name!r}: first dimension {shape[0]} differs from the other "
                        f"inputs' {rows}"
                    )
        if outputs is not None:
            for name in outputs:
                if name not in self._outputs:
                    raise BadRequestError(
                        f"unknown output {name!r}; the model has "
                        f"{', '.join(map(repr, sorted(self._outputs)))}"
                    )
        return max(rows, 1)

    def runs_now(self) -> bool:
        """Whether `infer_now` may answer a request within the caller's turn, without a
        task: always when `fast`; for a batched inline model, when the batcher is idle."""
        if self.fast:
            return True
        batcher = self._batched_now
        return batcher is not None and batcher.idle_now()

    def infer_now(self, inputs: dict[str, Array], outputs: list[str] | None) -> Outputs:
        """The fast path, only right after `runs_now()` said so: validate, look up the cache,
        run inline."""
        self.check(inputs, outputs)
        cache = self.cache
        if cache is not None:
            key = request_key(self.model + "/" + self.version, inputs, outputs)
            hit = cache.get(key)
            if hit is not None:
                self.vm.cache_hit.inc()
                return hit
            self.vm.cache_miss.inc()
        scheduler = self.scheduler
        assert isinstance(scheduler, DirectScheduler | DynamicBatcher)
        results = scheduler.run_now(inputs, outputs)
        if outputs is not None:
            results = {n: results[n] for n in outputs}
        if cache is not None:
            cache.put(key, results)
        return results

    async def infer(self, inputs: dict[str, Array], outputs: list[str] | None) -> Outputs:
        rows = self.check(inputs, outputs)
        if self.state != READY or self.scheduler is None or self._idle is None:
            raise RejectedError(
                f"model {self.model} version {self.version} is not ready ({self.state})",
                "not_ready",
            )
        cache = self.cache
        key = b""
        if cache is not None:
            key = request_key(self.model + "/" + self.version, inputs, outputs)
            hit = cache.get(key)
            if hit is not None:
                self.vm.cache_hit.inc()
                return hit
            self.vm.cache_miss.inc()
        self.inflight += 1
        self._idle.clear()
        try:
            faults = self.config.faults
            if faults.active:
                await self._inject(faults.added_latency_ms, faults.error_ratio)
            results = await self.scheduler.submit(inputs, outputs, rows)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
        if cache is not None:
            cache.put(key, results)
        return results

    @staticmethod
    async def _inject(latency_ms: float, error_ratio: float) -> None:
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000.0)
        if error_ratio > 0 and random.random() < error_ratio:
            raise BackendError("injected fault (faults.error_ratio)")

    async def drain_and_unload(self) -> None:
        """Stop taking requests, let the queued and running ones finish, release the model."""
        if self.state in (READY, UNAVAILABLE):
            self.state = UNLOADING
            self.metrics.model_ready.labels(
                self.model, self.version, self._ready_gauge_provider
            ).set(0)
        if self._idle is not None:
            await self._idle.wait()
        if self.scheduler is not None:
            await self.scheduler.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self.backend is not None:
            self.backend.unload()
        self.state = UNLOADED
        for labels in (("load",), ("warmup",)):
            with contextlib.suppress(KeyError):
                self.metrics.load_duration.remove(self.model, self.version, *labels)

    def metadata(self) -> dict[str, Any]:
        info = self.info
        return {
            "name": self.model,
            "versions": [self.version],
            "platform": info.platform if info else "",
            "inputs": [s.as_metadata() for s in self.input_specs],
            "outputs": [s.as_metadata() for s in self.output_specs],
            "parameters": {"execution_provider": info.provider if info else ""},
        }


def _as_text(arr: Array, name: str) -> Array:
    """ONNX string tensors hold UTF-8 text; onnxruntime takes them as Python str."""
    out = np.empty(arr.shape, dtype=object)
    flat, src = out.reshape(-1), arr.reshape(-1)
    try:
        for i, item in enumerate(src):
            flat[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError:
        raise BadRequestError(f"input {name!r}: element {i} is not UTF-8 text") from None
    return out


Stamp = tuple[tuple[str, int, int], ...]


def version_stamp(path: Path) -> Stamp:
    """What a version directory holds, by name, size and modification time (ns) of each
    entry: a file overwritten in place, or a half-copied one growing, changes it."""
    try:
        # Left out: hidden files and the server's own derived copies (the int8-quantised model
        # written next to the original), which would otherwise read as a change.
        entries = sorted(
            p
            for p in path.iterdir()
            if not p.name.startswith(".") and not p.name.startswith("model.int8-")
        )
        return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in entries)
    except OSError:
        return ()
