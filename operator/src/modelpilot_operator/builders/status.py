"""The part of status the reconciler owns, computed from what the cluster shows.

Fields: ``observedGeneration``, ``versions`` (desired/ready replicas, provider, message),
``weights`` (read back from the route), ``replicas``/``selector`` (the scale subresource)
and the conditions Ready, Progressing and Degraded. The rollout engine owns the rest.
A condition keeps its ``lastTransitionTime`` while its status does not change, so a steady
state computes the same status and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api.v1alpha1 import ModelDeployment
from .meta import LABEL_MODEL, LABEL_VERSION, md_name
from .problems import Problem
from .traffic import Traffic

OWNED_CONDITIONS = ("Ready", "Progressing", "Degraded")
# The status fields build_status writes (the reconciler's field manager owns them).
RECONCILER_STATUS_KEYS = (
    "conditions", "versions", "replicas", "selector", "observedGeneration", "weights",
)  # fmt: skip

# Container waiting reasons that will not clear by themselves, and what they mean.
_STUCK_REASONS = {
    "ErrImagePull": "ImagePullFailed",
    "ImagePullBackOff": "ImagePullFailed",
    "InvalidImageName": "ImagePullFailed",
    "CreateContainerConfigError": "ContainerConfigError",
    "CreateContainerError": "ContainerConfigError",
    "CrashLoopBackOff": "CrashLoop",
}
_HINTS = {
    "ImagePullFailed": "check spec.versions[].runtime.image (or the operator's default "
    "runtime image) and the image pull credentials",
    "ContainerConfigError": "create the Secret named in model.credentialsSecret in this "
    "namespace, or correct the name",
    "CrashLoop": "see the container's last termination message",
}


@dataclass(frozen=True)
class VersionObservation:
    """One version's Deployment, pods and the provider a ready pod reported."""

    name: str
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)
    provider: str | None = None


@dataclass(frozen=True)
class VersionState:
    name: str
    desired: int
    ready_replicas: int
    ready: bool
    rolling: bool
    provider: str | None
    problem: Problem | None


def _pod_problem(version: str, pods: list[dict[str, Any]]) -> Problem | None:
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        st = pod.get("status", {})
        statuses = (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or [])
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = _STUCK_REASONS.get(waiting.get("reason", ""))
            if reason is None:
                continue
            detail = waiting.get("message", "") or ""
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message", "")
            if reason == "CrashLoop" and last:
                detail = last.strip().splitlines()[-1]
            container = cs.get("name", "?")
            return Problem(
                reason,
                f"version {version}: container {container} of pod "
                f"{pod['metadata']['name']}: {waiting.get('reason')}: {detail}".rstrip(": ")
                + f"; {_HINTS[reason]}",
            )
    return None


def version_state(obs: VersionObservation) -> VersionState:
    dep = obs.deployment
    if dep is None:
        return VersionState(obs.name, 0, 0, False, True, None, _pod_problem(obs.name, obs.pods))
    spec, st = dep.get("spec", {}), dep.get("status", {})
    desired = int(spec.get("replicas", 1))
    ready_n = int(st.get("readyReplicas", 0))
    updated = int(st.get("updatedReplicas", 0))
    total = int(st.get("replicas", 0))
    current = int(st.get("observedGeneration", 0)) >= int(dep["metadata"].get("generation", 0))
    rolled = current and updated >= desired and total <= desired
    ready = rolled and ready_n >= desired
    return VersionState(
        name=obs.name,
        desired=desired,
        ready_replicas=ready_n,
        ready=ready,
        rolling=not ready,
        provider=obs.provider,
        problem=_pod_problem(obs.name, obs.pods),
    )


def _condition(
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    previous: dict[str, dict[str, Any]],
    now: str,
) -> dict[str, Any]:
    value = "True" if status else "False"
    old = previous.get(ctype)
    since = old.get("lastTransitionTime") if old and old.get("status") == value else None
    cond: dict[str, Any] = {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message[:4096],
        "lastTransitionTime": since or now,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def problem_conditions(
    reason: str,
    message: str,
    generation: int | None,
    previous: dict[str, dict[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """Ready, Progressing and Degraded for a problem that stops everything (e.g. a spec
    only the operator can find invalid)."""
    return [
        _condition("Ready", False, reason, message, generation, previous, now),
        _condition("Progressing", False, reason, message, generation, previous, now),
        _condition("Degraded", True, reason, message, generation, previous, now),
    ]


def build_status(
    md: ModelDeployment,
    observations: list[VersionObservation],
    traffic: Traffic | None,
    problems: list[Problem],
    now: str,
    previous_conditions: list[dict[str, Any]] | None = None,
    warnings: list[Problem] | None = None,
) -> dict[str, Any]:
    """The reconciler's status fields (wire form) for ``md`` as observed.

    ``warnings`` are problems that leave what serves Ready (e.g. a mirror left off the
    route): they make Degraded True but hold nothing back."""
    generation = md.metadata.get("generation")
    previous = {c.get("type", ""): c for c in previous_conditions or []}
    states = [version_state(o) for o in observations]
    pod_problems = [s.problem for s in states if s.problem is not None]
    all_problems = list(problems) + pod_problems
    stable = next((s for s in states if s.name == md.spec.stable), None)

    not_ready = [s.name for s in states if not s.ready]
    route_ok = md.spec.routing.router == "none" or traffic is not None
    ready = not all_problems and not not_ready and route_ok
    if ready:
        r_reason, r_msg = "AllVersionsReady", "every version has its replicas ready"
    elif all_problems:
        r_reason, r_msg = all_problems[0].reason, all_problems[0].message
    elif not_ready:
        r_reason = "VersionsNotReady"
        r_msg = "waiting for version(s) " + ", ".join(not_ready) + " to become ready"
    else:
        r_reason, r_msg = "RouteNotApplied", "the traffic route has not been read back yet"
    rolling = [s.name for s in states if s.rolling]
    progressing = bool(rolling) and not all_problems
    p_reason, p_msg = (
        ("RollingOut", "updating version(s) " + ", ".join(rolling))
        if progressing
        else ("Stalled", all_problems[0].message)
        if all_problems
        else ("Reconciled", "every version runs its current template")
    )
    degrading = all_problems + list(warnings or [])
    degraded = bool(degrading)
    d_reason, d_msg = (
        (degrading[0].reason, "; ".join(p.message for p in degrading))
        if degraded
        else ("AsExpected", "")
    )
    conditions = [
        _condition("Ready", ready, r_reason, r_msg, generation, previous, now),
        _condition("Progressing", progressing, p_reason, p_msg, generation, previous, now),
        _condition("Degraded", degraded, d_reason, d_msg, generation, previous, now),
    ]
    versions = []
    for s in states:
        entry: dict[str, Any] = {
            "name": s.name,
            "desiredReplicas": s.desired,
            "readyReplicas": s.ready_replicas,
            "ready": s.ready,
        }
        if s.provider:
            entry["provider"] = s.provider
        if s.problem is not None:
            entry["message"] = s.problem.message[:4096]
        versions.append(entry)
    out: dict[str, Any] = {
        "conditions": conditions,
        "versions": versions,
        "replicas": stable.ready_replicas if stable else 0,
        "selector": f"{LABEL_MODEL}={md_name(md)},{LABEL_VERSION}={md.spec.stable}",
    }
    if generation is not None:
        out["observedGeneration"] = generation
    if traffic is not None:
        out["weights"] = dict(sorted(traffic.weights.items()))
    return out
