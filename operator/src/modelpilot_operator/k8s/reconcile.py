"""One reconcile of a ModelDeployment: apply its children, observe them, write status.

The handlers call :func:`reconcile` on create, update, resume, every resync and on events
of its Deployments and pods. It is idempotent and keeps no state between calls besides a
cache of what pods reported, so an operator killed at any point converges when restarted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..api.v1alpha1 import API_VERSION, KIND, ModelDeployment
from ..builders import (
    LABEL_MODEL,
    LABEL_VERSION,
    BuildOptions,
    Problem,
    Traffic,
    VersionObservation,
    build_children,
    build_status,
    children_selector,
    desired_traffic,
    find_problems,
    md_name,
    md_namespace,
    read_route,
)
from ..builders.meta import HTTP_PORT
from ..builders.status import OWNED_CONDITIONS
from .children import ApplyReport, contains, installed_kinds, reconcile_children
from .client import KubeApi
from .kinds import DEPLOYMENT, POD
from .observe import ProviderCache

log = logging.getLogger(__name__)


@dataclass
class ReconcileResult:
    """What one reconcile found and did."""

    report: ApplyReport = field(default_factory=ApplyReport)
    problems: list[Problem] = field(default_factory=list)
    traffic: Traffic | None = None
    status: dict[str, Any] = field(default_factory=dict)
    status_written: bool = False
    previous_conditions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def transitions(self) -> list[dict[str, Any]]:
        """Conditions whose status or reason changed in this reconcile (for Events)."""
        out = []
        for cond in self.status.get("conditions", []):
            old = self.previous_conditions.get(cond["type"], {})
            if (old.get("status"), old.get("reason")) != (cond["status"], cond["reason"]):
                out.append(cond)
        return out


@dataclass
class Reconciler:
    """Holds what lives longer than one reconcile: the API, options and caches."""

    api: KubeApi
    options: BuildOptions
    providers: ProviderCache = field(default_factory=lambda: ProviderCache(None))
    kinds: set[str] | None = None
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def exclusive(self, namespace: str, name: str) -> Iterator[None]:
        """One reconcile per ModelDeployment at a time (events of its pods and Deployments
        arrive together); the next one then sees the status this one wrote."""
        with self._guard:
            lock = self._locks.setdefault((namespace, name), threading.Lock())
        with lock:
            yield

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop((namespace, name), None)

    def refresh_kinds(self) -> set[str]:
        """Ask discovery again which route/monitoring CRDs are installed."""
        self.kinds = installed_kinds(self.api)
        return self.kinds

    def reconcile(self, md: ModelDeployment, now: datetime | None = None) -> ReconcileResult:
        kinds = self.kinds if self.kinds is not None else self.refresh_kinds()
        options = BuildOptions(
            default_image=self.options.default_image,
            service_monitor=self.options.service_monitor and "ServiceMonitor" in kinds,
        )
        ns, name = md_namespace(md), md_name(md)
        uid = str(md.metadata.get("uid", ""))
        result = ReconcileResult()
        prev = md.status.conditions if md.status else []
        result.previous_conditions = {
            c.type: c.model_dump(by_alias=True, exclude_none=True) for c in prev
        }
        result.problems = find_problems(md, kinds)
        if not result.problems:
            traffic = desired_traffic(md.spec, md.status)
            desired = build_children(md, traffic, options)
            result.report = reconcile_children(
                self.api, ns, uid, children_selector(md), desired, kinds
            )
            for key, live in result.report.live.items():
                if key.split("/")[0] in ("VirtualService", "HTTPRoute"):
                    result.traffic = read_route(md, live)
            if md.spec.routing.router == "none":
                result.traffic = None
        else:
            # Nothing is touched while a problem stands: what serves keeps serving.
            for kind in (DEPLOYMENT,):
                for live in self.api.list(kind, ns, children_selector(md)):
                    result.report.live[f"{live['kind']}/{live['metadata']['name']}"] = live
        result.status = build_status(
            md,
            self._observe(md, result.report),
            result.traffic,
            result.problems,
            _timestamp(now),
            list(result.previous_conditions.values()),
        )
        current = md.status.to_wire() if md.status else {}
        if not status_holds(current, result.status):
            self.api.apply_status(
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "metadata": {"name": name, "namespace": ns},
                    "status": result.status,
                }
            )
            result.status_written = True
        return result

    def _observe(self, md: ModelDeployment, report: ApplyReport) -> list[VersionObservation]:
        pods = self.api.list(POD, md_namespace(md), f"{LABEL_MODEL}={md_name(md)}")
        out = []
        for v in sorted(md.spec.versions, key=lambda v: v.name):
            dep = report.live.get(f"Deployment/{md_name(md)}-{v.name}")
            mine = [p for p in pods if p["metadata"].get("labels", {}).get(LABEL_VERSION) == v.name]
            provider = self.providers.provider(mine, HTTP_PORT, md_name(md), v.name)
            out.append(VersionObservation(v.name, dep, mine, provider))
        return out


def status_holds(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether the live status already says what ``wanted`` says (conditions by type)."""
    rest = {k: v for k, v in wanted.items() if k != "conditions"}
    if not contains(current, rest):
        return False
    have = {c.get("type"): c for c in current.get("conditions", [])}
    return all(contains(have.get(c["type"]), c) for c in wanted.get("conditions", []))


def _timestamp(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["OWNED_CONDITIONS", "ReconcileResult", "Reconciler"]
