"""The controller against the in-memory API server, in virtual time.

:meth:`Cluster.step` does what the world around the operator would between two passes:
the watch caches catch up with the API server, Deployments report their replicas ready (as
the Deployment controller would), and time moves on; then the controller reconciles the
key once, as a worker would.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from datetime import datetime, timedelta
from typing import Any

from modelpilot_operator.builders import BuildOptions
from modelpilot_operator.controller import Controller
from modelpilot_operator.controller.manager import CHILD_SELECTOR
from modelpilot_operator.k8s.kinds import DEPLOYMENT, MODEL_DEPLOYMENT, Kind
from modelpilot_operator.metrics import OperatorMetrics
from tests.fakeprom import FakePrometheus
from tests.unit.k8s.fake import FakeApi
from tests.unit.rollout.harness import T0

OPTIONS = BuildOptions(default_image="ghcr.io/modelpilot/runtime:0.1.0")
KEY = ("ml", "fraud")


class Immediately(Executor):
    """Runs what is submitted at once, in the caller's thread."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class Cluster:
    def __init__(
        self,
        body: dict[str, Any],
        prometheus: FakePrometheus | None = None,
        leading: bool = True,
    ) -> None:
        self.api = FakeApi()
        self.api.put(body)
        self.now: datetime = T0
        self.leading = leading
        self.metrics = OperatorMetrics()
        self.controller = Controller(
            api=self.api,
            watch_api=None,  # type: ignore[arg-type]  # the caches are filled by step()
            namespaces=("ml",),
            options=OPTIONS,
            resync_period=300.0,
            workers=1,
            source=prometheus.source() if prometheus is not None else None,
            leading=lambda: self.leading,
            metrics=self.metrics,
            clock=lambda: self.now,
            analysis_pool=Immediately(),
        )

    def catch_up(self) -> None:
        """The watch caches see what the API server holds now."""
        c = self.controller
        for informers in c.caches.values():
            for informer in informers:
                selector = CHILD_SELECTOR
                informer.replace_all(self.api.list(informer.kind, "ml", selector))
                informer.synced.set()
        body = self.api.get(MODEL_DEPLOYMENT, *KEY)
        if body is None:
            c.mds.discard(*KEY)
        else:
            c.observe("MODIFIED", body)

    def deployments_ready(self) -> None:
        for dep in self.api.list(DEPLOYMENT, "ml"):
            n = int(dep["spec"].get("replicas", 1))
            dep["status"] = {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": n,
                "updatedReplicas": n,
                "readyReplicas": n,
            }
            self.api.update(dep, manager="kube-controller-manager", subresource="status")

    def step(self, seconds: float = 5.0) -> float | None:
        self.catch_up()
        requeue = self.controller.sync(KEY)
        self.deployments_ready()
        self.now += timedelta(seconds=seconds)
        return requeue

    def body(self) -> dict[str, Any]:
        body = self.api.get(MODEL_DEPLOYMENT, *KEY)
        assert body is not None
        return body

    def status(self) -> dict[str, Any]:
        return dict(self.body().get("status") or {})

    def events(self) -> list[str]:
        return [o["reason"] for (k, _, _), o in sorted(self.api.objects.items()) if k == "Event"]

    def writes(self, kind: Kind | None = None) -> int:
        if kind is None:
            return sum(n for w, n in self.api.writes.items() if not w.endswith(" Event"))
        return sum(n for w, n in self.api.writes.items() if w.endswith(" " + kind.kind))


def model_deployment(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml", "uid": "u1"},
        "spec": spec,
    }
