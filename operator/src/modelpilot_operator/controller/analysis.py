"""Analysis intervals queried off the workers, so a slow Prometheus holds up nothing else.

A rollout pass that finds an interval due asks :meth:`AnalysisRunner.result`: the first ask
starts the queries in a small thread pool and answers None; when they finish the key is
enqueued again, and the next pass gets the outcome (once). An outcome for an interval that
is no longer the due one (the step moved, the rollout was aborted) is dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from ..analysis import AnalysisOutcome, MetricSource, Target, analyze
from ..api.v1alpha1 import Rollout
from ..rollout import AnalysisWindow

log = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass
class _Job:
    start: datetime
    step: int | None
    future: Future[AnalysisOutcome]


class AnalysisRunner:
    def __init__(
        self,
        source: MetricSource,
        on_done: Callable[[Key], None],
        workers: int = 4,
        pool: Executor | None = None,
    ) -> None:
        self.source = source
        self.on_done = on_done
        self._pool = pool or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="analysis")
        self._jobs: dict[Key, _Job] = {}
        self._lock = threading.Lock()

    def result(
        self, key: Key, rollout: Rollout, target: Target, window: AnalysisWindow
    ) -> AnalysisOutcome | None:
        """The outcome for ``window`` if its queries are done; else start them (once)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and (job.start, job.step) == (window.start, window.step):
                if not job.future.done():
                    return None
                del self._jobs[key]
                try:
                    return job.future.result()
                except Exception:
                    log.exception("analysis of %s/%s failed", *key)
                    return None
            future = self._pool.submit(analyze, rollout, target, window, self.source)
            self._jobs[key] = _Job(window.start, window.step, future)
        future.add_done_callback(lambda _: self.on_done(key))
        return None

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if not j.future.done())

    def forget(self, key: Key) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
