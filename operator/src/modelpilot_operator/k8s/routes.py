"""Read back the weights a ModelDeployment's live route carries.

The route has one writer, the reconciler, which renders it from ``status.desiredWeights``
and ``status.mirrorPercent`` (the rollout engine's intent, see
:func:`modelpilot_operator.builders.desired_traffic`). This reads it back for whoever
needs to know what the route does now: the traffic driver of the local cluster, tools.
"""

from __future__ import annotations

from ..api.v1alpha1 import ModelDeployment
from ..builders import Traffic, md_name, md_namespace, read_route
from .client import KubeApi
from .kinds import HTTP_ROUTE, VIRTUAL_SERVICE

__all__ = ["Traffic", "read_traffic"]


def read_traffic(api: KubeApi, md: ModelDeployment) -> Traffic | None:
    """The traffic the live route carries; None if there is no route (yet) or it is not
    one the operator wrote. Router ``none`` has no route: None."""
    router = md.spec.routing.router
    if router == "none":
        return None
    kind = VIRTUAL_SERVICE if router == "istio" else HTTP_ROUTE
    live = api.get(kind, md_namespace(md), md_name(md))
    return read_route(md, live) if live is not None else None
