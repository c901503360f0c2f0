"""The control loop: watch caches feed a work queue; workers reconcile one key at a time.

In the style of controller-runtime: every change of a ModelDeployment, or of one of its
children or pods, enqueues the ModelDeployment's key (namespace, name); the queue hands a
key to one worker at a time and folds repeated adds together; a worker reconciles the key
from the caches (no LISTs), and the key comes back after the rollout's requeue time, the
resync period (with jitter) or, after an error, its back-off. No timer per object exists,
so kopf puts no finalizer on a ModelDeployment: deleting one needs no running operator.

Only the replica holding the Lease reconciles (and may write: the API client refuses
writes otherwise); every replica keeps its caches warm, so a new leader starts at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from ..analysis import MetricSource
from ..api.v1alpha1 import API_VERSION, KIND, ModelDeployment
from ..builders import LABEL_MODEL, MANAGED_BY, BuildOptions, md_name
from ..builders.status import RECONCILER_STATUS_KEYS, problem_conditions
from ..k8s.client import ApiError, ConflictError, KubeApi, NotLeaderError
from ..k8s.events import post_event
from ..k8s.informer import Informer, WatchApi, newer, same_version
from ..k8s.kinds import CHILD_KINDS, HTTP_ROUTE, MODEL_DEPLOYMENT, POD, VIRTUAL_SERVICE, Kind
from ..k8s.observe import ProviderCache, ProviderProbe
from ..k8s.reconcile import ChildrenView, Reconciler, ReconcileResult
from ..metrics import METRICS, OperatorMetrics
from ..rollout import ACTIVE_PHASES, Event
from .analysis import AnalysisRunner
from .rollout import has_work, rollout_step
from .rollout_metrics import forget_decisions, record_decision
from .workqueue import ShutDownError, WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]
CHILD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
LEGACY_FINALIZER = "modelpilot.io/finalizer"

RECONCILE_SECONDS = Histogram(
    "modelpilot_operator_reconcile_duration_seconds", "Time one reconcile took."
)
QUEUE_DEPTH = Gauge("modelpilot_operator_queue_depth", "ModelDeployments waiting for a worker now.")
QUEUE_RETRIES = Counter(
    "modelpilot_operator_queue_retries",
    "Reconciles retried after an error, by reason.",
    ("reason",),
)
LEADER = Gauge("modelpilot_operator_leader", "1 while this replica holds the Lease.")


class Controller:
    def __init__(
        self,
        api: KubeApi,
        watch_api: WatchApi,
        namespaces: tuple[str, ...],
        options: BuildOptions,
        resync_period: float,
        workers: int = 4,
        source: MetricSource | None = None,
        probe: ProviderProbe | None = None,
        leading: Callable[[], bool] = lambda: True,
        metrics: OperatorMetrics = METRICS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        analysis_pool: Executor | None = None,
    ) -> None:
        self.api = api
        self.resync_period = resync_period
        self.workers = workers
        self.leading = leading
        self.metrics = metrics
        self.clock = clock
        self.queue: WorkQueue[Key] = WorkQueue()
        self.reconciler = Reconciler(api=api, options=options, providers=ProviderCache(probe))
        self.analysis = (
            AnalysisRunner(source, self.queue.add, pool=analysis_pool)
            if source is not None
            else None
        )
        # The ModelDeployments themselves are fed by kopf's watch (observe()).
        self.mds = Informer(watch_api, MODEL_DEPLOYMENT, None, "")
        scopes: tuple[str | None, ...] = namespaces or (None,)
        self.caches: dict[str, list[Informer]] = {
            kind.kind: [
                Informer(watch_api, kind, ns, CHILD_SELECTOR, self._child_changed) for ns in scopes
            ]
            for kind in (*CHILD_KINDS, POD)
        }
        self._threads: list[threading.Thread] = []
        self._synced = threading.Event()
        self._stopping = threading.Event()

    # -- inputs ------------------------------------------------------------------------

    def observe(self, type_: str, body: dict[str, Any]) -> None:
        """A watch event of a ModelDeployment."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if type_ == "DELETED":
            self.mds.discard(*key)
        else:
            current = self.mds.get(*key)
            if same_version(body, current) or not newer(body, current):
                return  # the operator's own status write (or one before it), seen already
            self.mds.store(body)
        self.queue.add(key)

    def _child_changed(self, type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(LABEL_MODEL)
        if owner:
            self.queue.add((meta.get("namespace") or "", owner))

    def became_leader(self, leading: bool) -> None:
        LEADER.set(1 if leading else 0)
        if leading:
            # Events seen while following were dropped: look at everything once.
            for body in self.mds.items():
                self.queue.add((body["metadata"].get("namespace") or "", body["metadata"]["name"]))

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        for informers in self.caches.values():
            for informer in informers:
                informer.start()
        waiter = threading.Thread(target=self._wait_synced, name="cache-sync", daemon=True)
        waiter.start()
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _wait_synced(self) -> None:
        started = time.monotonic()
        for informers in self.caches.values():
            for informer in informers:
                while not informer.synced.wait(1.0):
                    if self._stopping.is_set():
                        return
        log.info("watch caches synced in %.1fs", time.monotonic() - started)
        self._synced.set()

    def stop(self) -> None:
        self._stopping.set()
        self.queue.shut_down()
        for informers in self.caches.values():
            for informer in informers:
                informer.stop()
        if self.analysis is not None:
            self.analysis.close()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    # -- workers -----------------------------------------------------------------------

    def _work(self) -> None:
        while not self._synced.wait(1.0):
            if self._stopping.is_set():
                return
        while True:
            try:
                key = self.queue.get(timeout=1.0)
            except ShutDownError:
                return
            QUEUE_DEPTH.set(self.queue.depth())
            if key is None:
                continue
            try:
                if self.leading():
                    self.process(key)
            finally:
                self.queue.done(key)

    def process(self, key: Key) -> None:
        """Reconcile one key and decide when it comes back."""
        started = time.perf_counter()
        try:
            requeue = self.sync(key)
        except NotLeaderError:
            # Leadership was lost mid-pass: the next leader looks at every key anyway.
            return
        except ConflictError as err:
            # Decided on an object that changed meanwhile: decide again on the newer one.
            log.info("%s/%s changed while it was reconciled (%s); again", *key, err.message)
            QUEUE_RETRIES.labels("conflict").inc()
            self.metrics.reconciles.labels("conflict").inc()
            self.queue.add_rate_limited(key)
            return
        except ApiError as err:
            QUEUE_RETRIES.labels("api").inc()
            self.metrics.reconciles.labels("error").inc()
            delay = self.queue.add_rate_limited(key)
            log.warning("reconcile of %s/%s failed: %s; again in %.1fs", *key, err, delay)
            return
        except Exception:
            QUEUE_RETRIES.labels("bug").inc()
            self.metrics.reconciles.labels("error").inc()
            delay = self.queue.add_rate_limited(key)
            log.exception("reconcile of %s/%s failed; again in %.1fs", *key, delay)
            return
        finally:
            RECONCILE_SECONDS.observe(time.perf_counter() - started)
        self.metrics.reconciles.labels("ok").inc()
        self.queue.forget(key)
        if self.mds.get(*key) is None:
            return
        delay = self.resync_period * random.uniform(0.9, 1.1)
        if requeue is not None:
            delay = min(delay, requeue)
        self.queue.add_after(key, delay)

    # -- one reconcile -----------------------------------------------------------------

    def sync(self, key: Key) -> float | None:
        """Reconcile the ModelDeployment ``key`` as the caches see it; the seconds after
        which it wants to be looked at again (None: the resync period)."""
        namespace, name = key
        body = self.mds.get(namespace, name)
        if body is None:
            self.forget(key)
            return None
        finalizers = body["metadata"].get("finalizers") or []
        if LEGACY_FINALIZER in finalizers:
            # Earlier versions ran kopf timers, which hold a finalizer on the object.
            body = self.api.merge_patch(
                MODEL_DEPLOYMENT,
                namespace,
                name,
                {
                    "metadata": {
                        "finalizers": [f for f in finalizers if f != LEGACY_FINALIZER],
                        "resourceVersion": body["metadata"].get("resourceVersion"),
                    }
                },
            )
            self.mds.store(body)
        if body["metadata"].get("deletionTimestamp"):
            return None  # the garbage collector removes the children
        try:
            md = ModelDeployment.model_validate(body)
        except ValidationError as err:
            # Admission lets through what only the operator can check (e.g. PromQL syntax):
            # report it and wait for the next spec change instead of retrying.
            self.metrics.reconciles.labels("invalid").inc()
            self._report_invalid(body, err)
            return None
        requeue = None
        if has_work(body):
            seen = body
            shadow = md.spec.rollout is not None and md.spec.rollout.strategy == "shadow"
            blocked = self.reconciler.mirror_problem(md) if shadow else None
            step = rollout_step(
                self.api,
                md,
                body,
                self._route(md),
                self.analysis,
                self.clock(),
                lambda e: self._emit(seen, e),
                blocked.message if blocked is not None else None,
            )
            if step.written is not None:
                self.mds.store(step.written)
                body = step.written
                md = ModelDeployment.model_validate(body)
            for event in step.decision.events:
                self._emit(body, event)
            record_decision(namespace, name, step.decision, self.metrics)
            if step.decision.status.phase in ACTIVE_PHASES:
                requeue = step.decision.requeue_after
        result = self.reconciler.reconcile(md, self._view(namespace, name), self.clock())
        self._remember(namespace, result)
        for cond in result.transitions():
            if cond["type"] == "Degraded" and cond["status"] == "True":
                post_event(self.api, body, "Warning", cond["reason"], cond["message"])
            elif cond["type"] == "Ready" and cond["status"] == "True":
                post_event(self.api, body, "Normal", "Ready", cond["message"])
            elif cond["type"] == "Degraded" and cond["status"] == "False":
                post_event(
                    self.api, body, "Normal", "Recovered", "the problems reported before are gone"
                )
        if result.report.writes:
            log.info(
                "%s/%s: applied %s; pruned %s",
                namespace,
                name,
                ", ".join(result.report.applied) or "nothing",
                ", ".join(result.report.pruned) or "nothing",
            )
        return requeue

    def forget(self, key: Key) -> None:
        """The ModelDeployment is gone: drop its metrics and pending work."""
        forget_decisions(*key, self.metrics)
        if self.analysis is not None:
            self.analysis.forget(key)
        self.queue.drop(key)

    def _emit(self, body: dict[str, Any], event: Event) -> None:
        post_event(self.api, body, event.type, event.reason, event.message)

    def kinds(self) -> set[str]:
        """Child kinds the cluster serves (an informer whose CRD is missing says so)."""
        return {
            kind.kind
            for kind in CHILD_KINDS
            if all(informer.served for informer in self.caches[kind.kind])
        }

    def _cache(self, kind: Kind, namespace: str) -> Informer:
        informers = self.caches[kind.kind]
        for informer in informers:
            if informer.namespace in (None, namespace):
                return informer
        return informers[0]

    def _route(self, md: ModelDeployment) -> dict[str, Any] | None:
        router = md.spec.routing.router
        if router == "none":
            return None
        kind = VIRTUAL_SERVICE if router == "istio" else HTTP_ROUTE
        namespace = str(md.metadata.get("namespace") or "")
        return self._cache(kind, namespace).get(namespace, md_name(md))

    def _view(self, namespace: str, name: str) -> ChildrenView:
        labels = {LABEL_MODEL: name}
        live: dict[str, dict[str, Any]] = {}
        for kind in CHILD_KINDS:
            for obj in self._cache(kind, namespace).items(namespace, labels):
                live[f"{kind.kind}/{obj['metadata']['name']}"] = obj
        pods = self._cache(POD, namespace).items(namespace, labels)
        return ChildrenView(live=live, pods=pods, kinds=self.kinds())

    def _remember(self, namespace: str, result: ReconcileResult) -> None:
        """Put what this reconcile wrote into the caches before the watch brings it."""
        for key in result.report.applied:
            kind = key.split("/", 1)[0]
            self._cache_of(kind, namespace).store(result.report.live[key])
        for key in result.report.pruned:
            kind, _, obj_name = key.partition("/")
            self._cache_of(kind, namespace).discard(namespace, obj_name)
        if result.written is not None:
            self.mds.store(result.written)

    def _cache_of(self, kind: str, namespace: str) -> Informer:
        return self._cache(next(k for k in CHILD_KINDS if k.kind == kind), namespace)

    def _report_invalid(self, body: dict[str, Any], err: ValidationError) -> None:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        message = f"the spec is invalid, nothing was applied: {problems}"
        status = body.get("status") or {}
        old = {c.get("type"): c for c in status.get("conditions") or []}
        if old.get("Degraded", {}).get("message") == message:
            return
        generation = body.get("metadata", {}).get("generation")
        now = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        # Under the reconciler's field manager: what it applied before and leaves out now
        # would be removed, so the fields it last wrote go along unchanged (what serves
        # keeps serving, and the scale subresource keeps its selector).
        kept = {k: status[k] for k in RECONCILER_STATUS_KEYS if k in status}
        kept["conditions"] = problem_conditions("InvalidSpec", message, generation, old, now)
        kept["observedGeneration"] = generation
        written = self.api.apply_status(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {
                    "name": body["metadata"]["name"],
                    "namespace": body["metadata"]["namespace"],
                    "resourceVersion": body["metadata"].get("resourceVersion"),
                },
                "status": kept,
            },
            force=False,
        )
        self.mds.store(written)
        post_event(self.api, body, "Warning", "InvalidSpec", message)
