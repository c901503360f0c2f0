"""A deduplicating, rate-limited work queue keyed by object, in the style of client-go's.

Producers (watch events, resyncs, requeues) :meth:`WorkQueue.add` keys; workers
:meth:`WorkQueue.get` one, reconcile it and call :meth:`WorkQueue.done`. A key is handed to
one worker at a time: added while queued it is queued once; added while a worker holds it,
it is queued again when that worker is done, so the next reconcile sees what caused the
add. :meth:`WorkQueue.add_after` delays a key (the earliest due time wins) and
:meth:`WorkQueue.add_rate_limited` delays it by a per-key exponential back-off that
:meth:`WorkQueue.forget` resets after a success.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class ShutDownError(Exception):
    """The queue was shut down: the worker should stop."""


class WorkQueue(Generic[K]):
    def __init__(
        self,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_delay
        self._max = max_delay
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._waiting: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._seq = itertools.count()
        self._failures: dict[K, int] = {}
        self._shutdown = False

    # -- producers ---------------------------------------------------------------------

    def add(self, key: K) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: K) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        """Add ``key`` once ``delay`` seconds have passed (an earlier pending time stays)."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutdown:
                return
            due = self._clock() + delay
            if self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            heapq.heappush(self._waiting, (due, next(self._seq), key))
            self._cond.notify()

    def add_rate_limited(self, key: K) -> float:
        """Add ``key`` after its back-off (doubling with each failure); returns the delay."""
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        delay = float(min(self._max, self._base * 2.0**n))
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its back-off starts over."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    # -- workers -----------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> K | None:
        """The next key (the caller must call :meth:`done`), or None after ``timeout``.

        Raises :class:`ShutDownError` once the queue is shut down.
        """
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                if self._shutdown:
                    raise ShutDownError
                self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                now = self._clock()
                wait = None if not self._waiting else max(0.0, self._waiting[0][0] - now)
                if deadline is not None:
                    if now >= deadline:
                        return None
                    left = deadline - now
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def _promote_due(self) -> None:
        now = self._clock()
        while self._waiting and self._waiting[0][0] <= now:
            due, _, key = heapq.heappop(self._waiting)
            if self._due.get(key) == due:
                del self._due[key]
                self._add(key)

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    # -- observation -------------------------------------------------------------------

    def depth(self) -> int:
        """Keys ready to be handed out now."""
        with self._cond:
            return len(self._queue)

    def pending(self) -> int:
        """Keys queued or waiting for their time."""
        with self._cond:
            return len(self._queue) + len(self._due)

    def drop(self, key: K) -> None:
        """Forget everything about ``key`` (its object is gone); a worker holding it keeps it."""
        with self._cond:
            self._failures.pop(key, None)
            self._due.pop(key, None)
            if key in self._dirty and key not in self._processing:
                self._dirty.discard(key)
                with contextlib.suppress(ValueError):
                    self._queue.remove(key)
