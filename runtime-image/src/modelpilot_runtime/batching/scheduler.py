"""Request scheduling for one model version.

`Runner` executes a (possibly batched) call on the backend, either inline on the event loop
or in the version's worker thread, and records compute time, batch size and predicted
classes. Inline execution is for models whose batch-1 run costs less than handing work to a
thread and back (tens of microseconds); everything slower runs in the thread so the event
loop keeps reading requests meanwhile.

`DirectScheduler` runs every request on its own. `DynamicBatcher` queues requests and runs up
to `max_batch_size` of them together. It batches adaptively: a request that finds the model
idle and nothing else arriving is run at once, without waiting for `max_delay`; requests
that came while the model was busy run together as soon as it is free; and while requests
keep arriving (every event-loop turn brings more) it waits for them, until the batch is full,
a turn brings none, or the oldest request has waited `max_delay`. For a model run inline, a
request that finds the batcher idle (nothing queued or running, and no other request run
this way in the same loop turn) is run by its caller right away (`idle_now`, `run_now`), as
if batching were off: a lone request pays nothing for batching, while the second request
read in the same turn, and every one behind it, is queued and batched. Requests that cannot
share a batch (different inner shapes) wait for the next one. When a batch fails, its halves
are run again (recursively), so a request the model cannot take gets its error alone and the
others of its batch are answered. Both keep at most `max_queue` requests waiting and reject
the rest at once (429); a request that waited past its timeout is rejected (503) instead of
run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from modelpilot_runtime.backends.base import Backend
from modelpilot_runtime.config import BatchingSettings
from modelpilot_runtime.errors import BackendError, InferenceError, RejectedError
from modelpilot_runtime.metrics import VersionMetrics
from modelpilot_runtime.tensors import Array

log = logging.getLogger(__name__)

Outputs = dict[str, Array]


class ClassCounter(Protocol):
    def __call__(self, results: Outputs) -> None: ...


class Runner:
    """Calls the backend and records what the call cost."""

    def __init__(
        self,
        backend: Backend,
        metrics: VersionMetrics,
        inline: bool,
        executor: ThreadPoolExecutor | None,
        count_classes: ClassCounter | None,
        class_output: str | None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.inline = inline or executor is None
        self.executor = executor
        self.count_classes = count_classes
        self.class_output = class_output

    def _names(self, outputs: list[str] | None) -> list[str] | None:
        # The classification output is always computed, so the class metric sees every row.
        if outputs is None or self.class_output is None or self.class_output in outputs:
            return outputs
        return [*outputs, self.class_output]

    def _predict(self, feeds: dict[str, Array], outputs: list[str] | None) -> tuple[Outputs, float]:
        """The backend call (on the loop or in the worker thread): results and seconds."""
        started = time.perf_counter()
        try:
            results = self.backend.predict(feeds, self._names(outputs))
        except InferenceError:
            raise
        except Exception as exc:
            raise BackendError(f"model execution failed: {exc}") from exc
        return results, time.perf_counter() - started

    def _record(self, results: Outputs, seconds: float, batch: int) -> None:
        # Always on the event-loop thread: the metric children are not locked.
        self.metrics.compute_duration.observe(seconds)
        self.metrics.batch_size.observe(batch)
        if self.count_classes is not None:
            self.count_classes(results)

    def run_sync(self, feeds: dict[str, Array], outputs: list[str] | None, batch: int) -> Outputs:
        results, seconds = self._predict(feeds, outputs)
        self._record(results, seconds, batch)
        return results

    async def run(self, feeds: dict[str, Array], outputs: list[str] | None, batch: int) -> Outputs:
        if self.inline:
            return self.run_sync(feeds, outputs, batch)
        loop = asyncio.get_running_loop()
        results, seconds = await loop.run_in_executor(self.executor, self._predict, feeds, outputs)
        self._record(results, seconds, batch)
        return results


class Scheduler(Protocol):
    runner: Runner

    @property
    def pending(self) -> int: ...

    async def submit(
        self, inputs: dict[str, Array], outputs: list[str] | None, rows: int
    ) -> Outputs: ...

    async def close(self) -> None: ...


class DirectScheduler:
    """No batching: each request runs alone, at most `max_queue` waiting or running."""

    def __init__(self, runner: Runner, settings: BatchingSettings) -> None:
        self.runner = runner
        self.max_queue = settings.max_queue
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def run_now(self, inputs: dict[str, Array], outputs: list[str] | None) -> Outputs:
        """The inline fast path: no queue, no task, no thread."""
        m = self.runner.metrics
        m.queue_duration.observe(0.0)
        return self.runner.run_sync(inputs, outputs, 1)

    async def submit(
        self, inputs: dict[str, Array], outputs: list[str] | None, rows: int
    ) -> Outputs:
        if self._pending >= self.max_queue:
            raise RejectedError(
                f"too many requests in flight for this model ({self.max_queue}); retry later",
                "queue_full",
                429,
            )
        m = self.runner.metrics
        self._pending += 1
        m.pending.inc()
        try:
            m.queue_duration.observe(0.0)
            return await self.runner.run(inputs, outputs, 1)
        finally:
            self._pending -= 1
            m.pending.dec()

    async def close(self) -> None:
        return None


class _NotBatchableError(BackendError):
    """The model's outputs do not follow the batch: no subset of the batch would do better."""


@dataclass(slots=True, eq=False)
class _Waiting:
    inputs: dict[str, Array]
    outputs: list[str] | None
    rows: int
    key: tuple[Any, ...]
    enqueued: float
    future: asyncio.Future[Outputs]
    timer: asyncio.TimerHandle | None = None
    queued: bool = True  # counted in the batcher's `_queued` and `_rows`
    behind: bool = False  # arrived while a batch was running: it has waited already


# Why the batcher dispatched a batch (`DynamicBatcher.dispatched` counts them).
NOW = "now"  # the model was idle: its caller ran a lone request in its own turn (`run_now`)
IDLE = "idle"  # the model was idle and nothing else was queued, or arrived in one loop turn
BUSY = "busy"  # requests that arrived while the model was busy, run as soon as it was free
FULL = "full"  # `max_batch_size` rows were waiting
QUIET = "quiet"  # requests were arriving, then a loop turn brought none
DELAY = "delay"  # requests kept arriving until the oldest had waited `max_delay`
CLOSING = "closing"  # the version is shutting down: what is queued runs now
DISPATCH_REASONS = (NOW, IDLE, BUSY, FULL, QUIET, DELAY, CLOSING)


def _batch_key(inputs: dict[str, Array]) -> tuple[Any, ...]:
    return tuple((name, arr.dtype.str, arr.shape[1:]) for name, arr in inputs.items())


class DynamicBatcher:
    """Gathers requests into batches of up to `max_batch_size` rows."""

    def __init__(self, runner: Runner, settings: BatchingSettings) -> None:
        self.runner = runner
        self.max_batch = settings.max_batch_size
        self.max_delay = settings.max_delay_ms / 1000.0
        self.max_queue = settings.max_queue
        self.timeout = settings.timeout_ms / 1000.0
        self._queue: deque[_Waiting] = deque()
        # Requests still waiting (not timed out, not gone, not running) and their rows: what
        # `max_queue` and a full batch count. The deque may still hold timed-out entries
        # until the worker next looks at them.
        self._queued = 0
        self._rows = 0
        self._running: list[_Waiting] = []
        self._arrivals = 0  # requests ever submitted: a loop turn that adds none is quiet
        self.restarts = 0
        # Batches run, by why they were dispatched (see DISPATCH_REASONS); `last_dispatch` is
        # the reason for the latest one.
        self.dispatched: Counter[str] = Counter()
        self.last_dispatch: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # A request was run by its caller (`run_now`) in this loop turn: the next one queues.
        self._turn_taken = False

    @property
    def pending(self) -> int:
        return self._queued

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._supervise())

    def idle_now(self) -> bool:
        """Whether a request may be run by its caller at once (`run_now`): the model is run
        inline, nothing is queued or running, and no request was run so in this loop turn
        (so that requests read together in one turn are batched, not run one by one)."""
        return (
            self.runner.inline
            and not self._queued
            and not self._running
            and not self._turn_taken
            and not self._closed
            and self._loop is not None
        )

    def _next_turn(self) -> None:
        self._turn_taken = False

    def run_now(self, inputs: dict[str, Array], outputs: list[str] | None) -> Outputs:
        """Run one request right away, in the caller's turn; only when `idle_now()` said so,
        with nothing awaited in between. Counted as a batch of one dispatched `now`."""
        assert self._loop is not None
        self._turn_taken = True
        self._loop.call_soon(self._next_turn)
        self.dispatched[NOW] += 1
        self.last_dispatch = NOW
        self.runner.metrics.queue_duration.observe(0.0)
        return self.runner.run_sync(inputs, outputs, 1)

    async def _supervise(self) -> None:
        """Run the worker; should it fail, answer what it held with 503 and start it again,
        so one fault does not leave every later request waiting for its timeout."""
        while True:
            try:
                await self._work()
                return
            except Exception:
                self.restarts += 1
                log.exception(
                    "batch worker failed (restart %d); failing its requests", self.restarts
                )
                error = RejectedError(
                    "the batch worker failed while this request waited; retry", "worker_failed"
                )
                for item in [*self._running, *self._queue]:
                    self._unqueue(item)
                    if not item.future.done():
                        item.future.set_exception(error)
                self._running = []
                self._queue.clear()
                self._waiter = None

    def _unqueue(self, item: _Waiting) -> None:
        if item.queued:
            item.queued = False
            self._queued -= 1
            self._rows -= item.rows

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def submit(
        self, inputs: dict[str, Array], outputs: list[str] | None, rows: int
    ) -> Outputs:
        if self._closed:
            raise RejectedError("the model version is shutting down", "shutdown")
        if self._queued >= self.max_queue:
            raise RejectedError(
                f"queue full ({self.max_queue} requests waiting for this model); retry later",
                "queue_full",
                429,
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        item = _Waiting(inputs, outputs, rows, _batch_key(inputs), time.monotonic(), future)
        item.behind = bool(self._running)
        self._arrivals += 1
        # The client is answered when its timeout passes even if the worker is busy with a
        # long batch; the queue entry itself is dropped when the worker next looks at it.
        item.timer = loop.call_later(self.timeout, self._expire, item)
        self._queue.append(item)
        self._queued += 1
        self._rows += rows
        m = self.runner.metrics
        m.pending.inc()
        # Wake the worker when it sleeps for want of requests.
        if self._queued == 1:
            self._wake()
        try:
            return await future
        finally:
            self._unqueue(item)  # the client went away (cancelled) before it ran
            m.pending.dec()

    def _expire(self, item: _Waiting) -> None:
        self._unqueue(item)
        if not item.future.done():
            item.future.set_exception(self._timeout_error(time.monotonic() - item.enqueued))

    def _timeout_error(self, waited: float) -> RejectedError:
        return RejectedError(
            f"waited {1000 * waited:.0f} ms in the queue, past the "
            f"{1000 * self.timeout:.0f} ms request timeout",
            "timeout",
        )

    async def _wait(self) -> None:
        """Sleep until `submit` or `close` wakes the worker."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _work(self) -> None:
        woken = False  # the worker slept for want of requests and was woken by one
        while True:
            if not self._queued:
                self._queue.clear()  # only entries that timed out or whose client went away
                if self._closed:
                    return
                await self._wait()
                woken = True
                continue
            reason = await self._gather(woken)
            batch = self._take()
            if batch:
                self.dispatched[reason] += 1
                self.last_dispatch = reason
                self._running = batch
                await self._run(batch)
                self._running = []
            woken = False

    async def _gather(self, woken: bool) -> str:
        """Wait as long as waiting is likely to pay, and say why it stopped.

        A lone request that woke the worker (the model idle, nothing else queued) runs at
        once: the worker runs a loop turn after the request's own, so every request read in
        the same poll has joined the queue by then. Otherwise one loop turn is taken first:
        it sends the answers of the batch that just ran (an inline model holds the loop while
        it runs) and lets the requests read in the next poll join. After it, a batch is run
        at once if it is full, if its requests came while the model was busy (they have
        waited for that batch already), or if the turn brought no new request. Only while
        every turn brings more requests does the batch wait for them, until it is full, a
        turn brings none, or the oldest request has waited `max_delay` (with `max_delay` 0,
        one turn only). Turns are not timers: a turn with nothing to read costs a poll of the
        sockets, not a sleep.
        """
        if woken and self._queued == 1 and not self._closed:
            return IDLE
        arrivals = self._arrivals
        await asyncio.sleep(0)
        if self._rows >= self.max_batch:
            return FULL
        if self._closed:
            return CLOSING
        oldest = self._oldest()
        if oldest is None or oldest.behind:
            return BUSY
        if self._arrivals == arrivals:
            return IDLE
        deadline = oldest.enqueued + self.max_delay
        while True:
            if self.max_delay <= 0 or time.monotonic() >= deadline:
                return DELAY
            arrivals = self._arrivals
            await asyncio.sleep(0)
            if self._rows >= self.max_batch:
                return FULL
            if self._closed:
                return CLOSING
            if self._arrivals == arrivals:
                return QUIET

    def _oldest(self) -> _Waiting | None:
        for item in self._queue:
            if item.queued:
                return item
        return None

    def _take(self) -> list[_Waiting]:
        now = time.monotonic()
        batch: list[_Waiting] = []
        rest: deque[_Waiting] = deque()
        rows = 0
        key = None
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # timed out, or the client went away
                self._unqueue(item)
                continue
            if now - item.enqueued > self.timeout:
                self._unqueue(item)
                item.future.set_exception(self._timeout_error(now - item.enqueued))
                continue
            if key is None:
                key = item.key
            if item.key == key and (not batch or rows + item.rows <= self.max_batch):
                if item.timer is not None:
                    item.timer.cancel()  # running now: it no longer waits
                self._unqueue(item)
                batch.append(item)
                rows += item.rows
            else:
                rest.append(item)
        self._queue = rest
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        started = time.monotonic()
        m = self.runner.metrics
        for item in batch:
            m.queue_duration.observe(started - item.enqueued)
        await self._run_isolated(batch)

    async def _run_isolated(self, batch: list[_Waiting]) -> None:
        """Run a batch; when it fails, run each half again (recursively), so that a request
        the model cannot take fails alone and every other one of its batch is answered."""
        try:
            results = await self._execute(batch)
        except _NotBatchableError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            mid = len(batch) // 2
            await self._run_isolated(batch[:mid])
            await self._run_isolated(batch[mid:])
            return
        offset = 0
        for item in batch:
            if not item.future.done():
                names = item.outputs if item.outputs is not None else list(results)
                if len(batch) == 1:
                    item.future.set_result({n: results[n] for n in names})
                else:
                    end = offset + item.rows
                    item.future.set_result({n: results[n][offset:end] for n in names})
            offset += item.rows

    async def _execute(self, batch: list[_Waiting]) -> Outputs:
        first = batch[0]
        if len(batch) == 1:
            return await self.runner.run(first.inputs, first.outputs, 1)
        feeds = {name: np.concatenate([w.inputs[name] for w in batch]) for name in first.inputs}
        results = await self.runner.run(feeds, _union_outputs(batch), len(batch))
        total = sum(w.rows for w in batch)
        for name, arr in results.items():
            if arr.ndim == 0 or arr.shape[0] != total:
                raise _NotBatchableError(
                    f"output {name!r} has shape {list(arr.shape)} for a batch of {total} "
                    "rows: this model cannot be batched; set max_batch_size to 1"
                )
        return results

    @staticmethod
    def _fail(batch: list[_Waiting], exc: Exception) -> None:
        error = exc if isinstance(exc, InferenceError) else BackendError(str(exc))
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    async def close(self) -> None:
        """Finish everything queued, then stop the worker."""
        self._closed = True
        self._wake()
        if self._task is not None:
            await self._task


def _union_outputs(batch: list[_Waiting]) -> list[str] | None:
    names: list[str] = []
    for item in batch:
        if item.outputs is None:
            return None
        names.extend(n for n in item.outputs if n not in names)
    return names
