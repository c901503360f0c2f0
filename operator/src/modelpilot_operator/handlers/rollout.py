"""Thin rollout handler: one timer per ModelDeployment runs one engine tick.

Read status and the live route, run the analysis interval if one is due, call the pure
engine, write status (the route builders render from ``status.desiredWeights``), apply the
route, emit the engine's Events. Nothing is kept in memory between ticks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from ..analysis import (
    MetricSource,
    PrometheusClient,
    PrometheusSettings,
    PrometheusSource,
    Target,
    analyze,
)
from ..api.v1alpha1 import GROUP, PLURAL, VERSION, ModelDeployment, ModelDeploymentStatus
from ..k8s.client import KubeApi
from ..k8s.kinds import MODEL_DEPLOYMENT
from ..k8s.routes import apply_weights, read_traffic
from ..k8s.status import write_rollout_status
from ..rollout import Decision, Event, Observations, analysis_due, reconcile
from .rollout_metrics import record_decision
from .state import reconciler

EmitEvent = Callable[[Event], None]
ENGINE_CONDITIONS = ("Promoted", "RolledBack")

_STATUS_KEYS = (
    "phase", "message", "stable", "candidate", "candidateRevision", "candidateWeight",
    "weights", "desiredWeights", "mirrorPercent", "step", "stepStartedAt", "rolloutStartedAt",
    "lastAnalysisAt", "passedIntervals", "failedIntervals", "inconclusiveSince", "paused",
    "analysis", "conditions", "handledRequest", "observedGeneration",
)  # fmt: skip


def rollout_tick(
    api: KubeApi,
    body: dict[str, Any],
    source: MetricSource,
    now: datetime,
    emit: EmitEvent,
) -> Decision:
    """One tick of the rollout for the ModelDeployment in ``body``."""
    md = ModelDeployment.model_validate(
        {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        | {"status": body.get("status") or {}}
    )
    status = md.status or ModelDeploymentStatus()
    meta = md.metadata
    traffic = read_traffic(api, md)
    ready = {v.name: v.ready for v in status.versions}
    candidate = md.spec.rollout.candidate if md.spec.rollout else status.candidate
    record = None
    window = analysis_due(md.spec, status, now)
    if window is not None and md.spec.rollout is not None and status.candidate:
        target = Target(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            stable=status.stable or md.spec.stable,
            candidate=status.candidate,
        )
        outcome = analyze(md.spec.rollout, target, window, source)
        record = outcome.record
        if outcome.unavailable:
            emit(Event("Warning", "MetricsUnavailable", outcome.unavailable))
    obs = Observations(
        weights=None if traffic is None else traffic.weights,
        mirror_percent=None if traffic is None else traffic.mirror_percent,
        stable_ready=ready.get(status.stable or md.spec.stable, False),
        candidate_ready=candidate is not None and ready.get(candidate, False),
        analysis=record,
        generation=meta.get("generation"),
    )
    decision = reconcile(md.spec, status, obs, now)
    wire = decision.status.to_wire()
    patch = {k: wire.get(k) for k in _STATUS_KEYS}
    # Ready, Progressing and Degraded belong to the reconciler's status writer.
    patch["conditions"] = [
        c for c in wire.get("conditions", []) if c.get("type") in ENGINE_CONDITIONS
    ]
    write_rollout_status(
        api,
        meta,
        body.get("status") or {},
        {k: v for k, v in patch.items() if v is not None},
        _STATUS_KEYS,
        ENGINE_CONDITIONS,
    )
    md.status = decision.status
    apply_weights(api, md, decision.weights, decision.mirror_percent, decision.status.phase)
    for event in decision.events:
        emit(event)
    record_decision(meta.get("namespace", ""), meta.get("name", ""), decision)
    return decision


_api: KubeApi | None = None
_source: MetricSource | None = None


def _clients() -> tuple[KubeApi, MetricSource]:
    global _api, _source
    if _api is None:
        _api = reconciler().api
    if _source is None:
        settings = PrometheusSettings.from_env(os.environ)
        _source = PrometheusSource(PrometheusClient(settings))
    return _api, _source


def rollout_has_work(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """Whether the engine has anything to do: a rollout in the spec, a status that is not
    the settled stable state yet, or a manual request not handled yet.

    kopf re-evaluates this on every change of the object and runs the timer only while it
    holds: 300 settled ModelDeployments ticking every 5 s cost 60 reads a second and crowded
    the reconciler's resync out of the worker pool.
    """
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


@kopf.timer(GROUP, VERSION, PLURAL, interval=5.0, initial_delay=1.0, when=rollout_has_work)
def rollout_timer(body: kopf.Body, name: str, namespace: str | None, **_: Any) -> None:
    """Advance the rollout of one ModelDeployment.

    The tick runs under the reconciler's lock for this object and on the object read
    inside it, not on the body kopf hands over: that one may predate the last tick's status
    write, and a reconcile running at the same time would render the route from the
    desired weights it read before this tick changed them, putting the previous step's
    weights back on the route.
    """
    api, source = _clients()

    def emit(event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])

    try:
        with reconciler().exclusive(namespace or "", name):
            live = api.get(MODEL_DEPLOYMENT, namespace, name)
            if live is None or live["metadata"].get("deletionTimestamp"):
                return
            rollout_tick(api, live, source, datetime.now(UTC), emit)
    except ValidationError:
        # The reconciler reports an invalid spec in status and as an Event; the engine
        # waits for a valid one instead of failing (and retrying) every tick.
        return
