"""One reconcile of a ModelDeployment: apply its children, observe them, write status.

The controller calls :meth:`Reconciler.reconcile` for every key its work queue hands out,
with the children and pods its watch caches hold. It is idempotent and keeps no state
between calls besides a cache of what pods reported, so an operator killed at any point
converges when restarted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ..api.v1alpha1 import API_VERSION, KIND, ModelDeployment
from ..builders import (
    LABEL_VERSION,
    BuildOptions,
    Problem,
    Traffic,
    VersionObservation,
    build_children,
    build_status,
    desired_traffic,
    find_problems,
    md_name,
    md_namespace,
    read_route,
)
from ..builders.gateway import classes_without_mirror, mirror_problem
from ..builders.meta import HTTP_PORT
from ..builders.status import OWNED_CONDITIONS
from .children import ApplyReport, contains, reconcile_children
from .client import KubeApi
from .gateways import GatewayFeatures
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
    written: dict[str, Any] | None = None
    """The ModelDeployment as the status write left it."""
    previous_conditions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def transitions(self) -> list[dict[str, Any]]:
        """Conditions whose status or reason changed in this reconcile (for Events)."""
        out = []
        for cond in self.status.get("conditions", []):
            old = self.previous_conditions.get(cond["type"], {})
            if (old.get("status"), old.get("reason")) != (cond["status"], cond["reason"]):
                out.append(cond)
        return out


@dataclass(frozen=True)
class ChildrenView:
    """What the watch caches hold for one ModelDeployment."""

    live: dict[str, dict[str, Any]]
    """Its children by ``Kind/name``."""
    pods: list[dict[str, Any]]
    kinds: set[str]
    """Child kinds the cluster serves (CRDs installed)."""


@dataclass
class Reconciler:
    """Holds what lives longer than one reconcile: the API, options and caches."""

    api: KubeApi
    options: BuildOptions
    providers: ProviderCache = field(default_factory=lambda: ProviderCache(None))
    gateways: GatewayFeatures | None = None

    def __post_init__(self) -> None:
        if self.gateways is None:
            self.gateways = GatewayFeatures(self.api)

    def mirror_problem(self, md: ModelDeployment) -> Problem | None:
        """Why the route cannot carry a mirror (None: it can, or its Gateways do not say):
        router gatewayApi and a GatewayClass that publishes its supported features without
        HTTPRouteRequestMirror."""
        if md.spec.routing.router != "gatewayApi":
            return None
        assert self.gateways is not None
        return mirror_problem(classes_without_mirror(self.gateways.classes(md)))

    def reconcile(
        self, md: ModelDeployment, view: ChildrenView, now: datetime | None = None
    ) -> ReconcileResult:
        """Apply what differs, prune what is no longer wanted, write status if it changed.

        ``md`` must be the newest the caller knows of: its ``status.desiredWeights`` is
        what the route gets, and its resourceVersion is the status write's precondition
        (:class:`~.client.ConflictError` when the object changed meanwhile).
        """
        kinds = view.kinds
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
        warnings: list[Problem] = []
        if not result.problems:
            traffic = desired_traffic(md.spec, md.status)
            if traffic.mirror_version is not None and traffic.mirror_percent > 0:
                blocked = self.mirror_problem(md)
                if blocked is not None:
                    # The mirror would break the whole rule: serve stable, say why.
                    warnings.append(blocked)
                    traffic = replace(traffic, mirror_version=None, mirror_percent=0)
            desired = build_children(md, traffic, options)
            result.report = reconcile_children(self.api, ns, uid, view.live, desired, kinds)
            for key, live in result.report.live.items():
                if key.split("/")[0] in ("VirtualService", "HTTPRoute"):
                    result.traffic = read_route(md, live)
            if md.spec.routing.router == "none":
                result.traffic = None
        else:
            # Nothing is touched while a problem stands: what serves keeps serving.
            result.report.live = {k: v for k, v in view.live.items() if k.startswith("Deployment/")}
        result.status = build_status(
            md,
            self._observe(md, result.report, view.pods),
            result.traffic,
            result.problems,
            _timestamp(now),
            list(result.previous_conditions.values()),
            warnings,
        )
        current = md.status.to_wire() if md.status else {}
        if not status_holds(current, result.status):
            result.written = self.api.apply_status(
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "resourceVersion": md.metadata.get("resourceVersion"),
                    },
                    "status": result.status,
                },
                force=False,
            )
            result.status_written = True
        return result

    def _observe(
        self, md: ModelDeployment, report: ApplyReport, pods: list[dict[str, Any]]
    ) -> list[VersionObservation]:
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


__all__ = ["OWNED_CONDITIONS", "ChildrenView", "ReconcileResult", "Reconciler"]
