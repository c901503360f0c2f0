"""Apply a ModelDeployment's traffic route and read back the weights it carries.

For the rollout engine: write the intended weights to ``status.desiredWeights`` (and
``status.mirrorPercent``) first, so that the reconciler's resync renders the same route,
then call :func:`apply_traffic` (or :func:`apply_weights`) and trust only what
:func:`read_traffic` returns.
"""

from __future__ import annotations

from ..api.v1alpha1 import ModelDeployment
from ..builders import Traffic, build_routes, md_name, md_namespace, read_route
from ..builders.traffic import MATCH_PHASES
from .children import needs_apply, with_hash
from .client import KubeApi
from .kinds import HTTP_ROUTE, VIRTUAL_SERVICE, kind_of

__all__ = ["Traffic", "apply_traffic", "apply_weights", "read_traffic"]


def apply_traffic(api: KubeApi, md: ModelDeployment, traffic: Traffic) -> Traffic | None:
    """Server-side apply the route objects for ``traffic`` (nothing is written when the
    live route already carries it); returns the traffic read back from the applied route,
    or None for router ``none``."""
    result: Traffic | None = None
    for obj in build_routes(md, traffic):
        target = with_hash(obj)
        live = api.get(kind_of(obj), md_namespace(md), obj["metadata"]["name"])
        if needs_apply(target, live):
            live = api.apply(target)
        if obj["kind"] in ("VirtualService", "HTTPRoute") and live is not None:
            result = read_route(md, live)
    return result


def apply_weights(
    api: KubeApi,
    md: ModelDeployment,
    weights: dict[str, int],
    mirror_percent: int = 0,
    phase: str = "Progressing",
) -> Traffic | None:
    """:func:`apply_traffic` for the rollout's weights: the mirror (shadow) and the A/B
    matches (abTest, in the phases that route them) come from ``md.spec.rollout``."""
    rollout = md.spec.rollout
    candidate = rollout.candidate if rollout else None
    match = (
        tuple(rollout.match)
        if rollout and rollout.strategy == "abTest" and phase in MATCH_PHASES
        else ()
    )
    traffic = Traffic(
        weights=dict(weights),
        mirror_version=candidate if mirror_percent > 0 else None,
        mirror_percent=mirror_percent if candidate else 0,
        match_version=candidate if match else None,
        match=match,
    )
    return apply_traffic(api, md, traffic)


def read_traffic(api: KubeApi, md: ModelDeployment) -> Traffic | None:
    """The traffic the live route carries; None if there is no route (yet) or it is not
    one the operator wrote. Router ``none`` has no route: None."""
    router = md.spec.routing.router
    if router == "none":
        return None
    kind = VIRTUAL_SERVICE if router == "istio" else HTTP_ROUTE
    live = api.get(kind, md_namespace(md), md_name(md))
    return read_route(md, live) if live is not None else None
