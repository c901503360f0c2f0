"""One rollout step of a ModelDeployment: observe, decide (pure engine), write status.

The engine writes status only (its own field manager): ``desiredWeights`` and
``mirrorPercent`` are what the reconciler renders into the route in the same pass, so the
route has one writer. Analysis intervals are queried by the :class:`AnalysisRunner` off
the worker: a due interval is picked up by a later pass once its result is in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..analysis import Target
from ..api.v1alpha1 import ModelDeployment, ModelDeploymentStatus
from ..builders import md_name, md_namespace, read_route
from ..builders.status import RECONCILER_STATUS_KEYS
from ..k8s.client import KubeApi
from ..k8s.status import write_rollout_status
from ..rollout import Decision, Event, Observations, analysis_due, parse_time, reconcile
from .analysis import AnalysisRunner

EmitEvent = Callable[[Event], None]
ENGINE_CONDITIONS = ("Promoted", "RolledBack")
# Status fields other writers own: the reconciler's observations (the weights read back
# from the route among them) and the CLI's request. Two managers applying one field with
# different values conflict, so none is shared.
_NOT_ENGINE = frozenset({*RECONCILER_STATUS_KEYS, "request"}) - {"conditions"}
ENGINE_KEYS: tuple[str, ...] = tuple(
    str(f.alias or n)
    for n, f in ModelDeploymentStatus.model_fields.items()
    if (f.alias or n) not in _NOT_ENGINE
)


@dataclass(frozen=True)
class StepResult:
    decision: Decision
    written: dict[str, Any] | None
    """The ModelDeployment as the status write left it (None: nothing written)."""


def has_work(body: Mapping[str, Any]) -> bool:
    """Whether the engine has anything to decide: a rollout in the spec, a status that is
    not the settled stable state yet, or a manual request not handled yet."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    stable = spec.get("stable")
    request = (status.get("request") or {}).get("id")
    return bool(
        spec.get("rollout")
        or status.get("phase") != "Stable"
        or status.get("stable") != stable
        or status.get("candidate")
        or (status.get("desiredWeights") or {}) != {stable: 100}
        or status.get("mirrorPercent")
        or (request and request != status.get("handledRequest"))
    )


def rollout_step(
    api: KubeApi,
    md: ModelDeployment,
    body: dict[str, Any],
    route: dict[str, Any] | None,
    analysis: AnalysisRunner | None,
    now: datetime,
    emit: EmitEvent,
    mirror_blocked: str | None = None,
) -> StepResult:
    """One decision for ``md`` (validated from ``body``); ``route`` is the live route;
    ``mirror_blocked`` why the route cannot carry a mirror (None: it can)."""
    status = md.status or ModelDeploymentStatus()
    meta = md.metadata
    traffic = None
    if md.spec.routing.router != "none" and route is not None:
        traffic = read_route(md, route)
    ready = {v.name: v.ready for v in status.versions}
    candidate = md.spec.rollout.candidate if md.spec.rollout else status.candidate
    record = None
    window = analysis_due(md.spec, status, now)
    if window is not None and md.spec.rollout is not None and status.candidate and analysis:
        target = Target(
            namespace=md_namespace(md),
            name=md_name(md),
            stable=status.stable or md.spec.stable,
            candidate=status.candidate,
        )
        outcome = analysis.result((target.namespace, target.name), md.spec.rollout, target, window)
        if outcome is not None:
            record = outcome.record
            # Decided as of the end of the interval the evidence covers (its queries ran
            # off the worker, a moment ago): the decision's times are the record's.
            now = parse_time(record.at)
            if outcome.unavailable:
                emit(Event("Warning", "MetricsUnavailable", outcome.unavailable))
    obs = Observations(
        weights=None if traffic is None else traffic.weights,
        mirror_percent=None if traffic is None else traffic.mirror_percent,
        stable_ready=ready.get(status.stable or md.spec.stable, False),
        candidate_ready=candidate is not None and ready.get(candidate, False),
        analysis=record,
        generation=meta.get("generation"),
        mirror_blocked=mirror_blocked,
    )
    decision = reconcile(md.spec, status, obs, now)
    wire = decision.status.to_wire()
    patch = {k: wire.get(k) for k in ENGINE_KEYS}
    # Ready, Progressing and Degraded belong to the reconciler's status writer.
    patch["conditions"] = [
        c for c in wire.get("conditions", []) if c.get("type") in ENGINE_CONDITIONS
    ]
    written = write_rollout_status(
        api,
        meta,
        body.get("status") or {},
        {k: v for k, v in patch.items() if v is not None},
        ENGINE_KEYS,
        ENGINE_CONDITIONS,
    )
    return StepResult(decision, written)
