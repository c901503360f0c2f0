"""Who gets the traffic: the weights, mirror and A/B matches a route should carry.

The rollout engine owns the intent and writes it to status (``desiredWeights``,
``mirrorPercent``); the route builders only render it. Without a rollout, or without
usable intended weights, all traffic goes to ``spec.stable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus, TrafficMatch

# Phases in which an abTest rollout sends matching requests to the candidate.
MATCH_PHASES = frozenset({"Progressing", "AwaitingPromotion", "Promoting"})


@dataclass(frozen=True)
class Traffic:
    """A route's traffic split: percent per version (summing to 100), an optional mirror
    (responses dropped) and optional matches whose requests go to ``match_version``."""

    weights: dict[str, int]
    mirror_version: str | None = None
    mirror_percent: int = 0
    match_version: str | None = None
    match: tuple[TrafficMatch, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if sum(self.weights.values()) != 100 or any(
            not 0 <= w <= 100 for w in self.weights.values()
        ):
            raise ValueError(f"weights must be 0..100 and sum to 100, got {self.weights}")


def all_to(version: str) -> Traffic:
    return Traffic(weights={version: 100})


def desired_traffic(spec: ModelDeploymentSpec, status: ModelDeploymentStatus | None) -> Traffic:
    """The traffic the route should carry now, from the spec and the rollout's status."""
    names = {v.name for v in spec.versions}
    if status is None or spec.rollout is None:
        return all_to(spec.stable)
    weights = {v: w for v, w in sorted(status.desired_weights.items()) if v in names}
    if not weights or sum(weights.values()) != 100:
        weights = {spec.stable: 100}
    candidate = spec.rollout.candidate
    mirror = status.mirror_percent if candidate in names else 0
    match: tuple[TrafficMatch, ...] = ()
    # Matched users go to the candidate once its step has started, that is once it was
    # ready (as the weights do): before, they would get no answer from it.
    started = status.step_started_at is not None or bool(status.step)
    if (
        spec.rollout.strategy == "abTest"
        and status.phase in MATCH_PHASES
        and started
        and candidate in names
        and spec.rollout.match
    ):
        match = tuple(spec.rollout.match)
    return Traffic(
        weights=weights,
        mirror_version=candidate if mirror > 0 else None,
        mirror_percent=mirror,
        match_version=candidate if match else None,
        match=match,
    )
