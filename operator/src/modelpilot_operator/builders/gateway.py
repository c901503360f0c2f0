"""PURE: whether the Gateways an HTTPRoute attaches to can mirror requests.

A Gateway API implementation that does not implement the ``RequestMirror`` filter may still
accept a route that carries it and then answer every request of the rule with an error,
stable traffic included (Traefik does). Since Gateway API v1.2 a GatewayClass lists what
its implementation supports in ``status.supportedFeatures``; ``HTTPRouteRequestMirror`` is
the mirror. When a GatewayClass publishes that list and the feature is not in it, the
operator leaves the mirror off the route and says why. A class that publishes no list is
unknown, and the mirror is rendered as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.v1alpha1 import ModelDeployment
from .meta import md_namespace
from .problems import Problem

MIRROR_FEATURE = "HTTPRouteRequestMirror"
MIRROR_UNSUPPORTED = "MirrorUnsupported"
GATEWAY_GROUP = "gateway.networking.k8s.io"


def gateway_refs(md: ModelDeployment) -> list[tuple[str, str]]:
    """The (namespace, name) of every Gateway the ModelDeployment's route attaches to; the
    namespace defaults to the ModelDeployment's."""
    out: list[tuple[str, str]] = []
    for ref in md.spec.routing.parent_refs:
        if ref.kind != "Gateway":
            continue
        key = (ref.namespace or md_namespace(md), ref.name)
        if key not in out:
            out.append(key)
    return out


def supported_features(gateway_class: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The feature names a GatewayClass publishes in ``status.supportedFeatures``, or None
    when it publishes none (an older implementation, or no GatewayClass seen): unknown.

    Entries are objects ``{name: ...}`` (Gateway API v1.2 on); plain strings (the
    experimental form before it) are read too.
    """
    if not gateway_class:
        return None
    listed = (gateway_class.get("status") or {}).get("supportedFeatures")
    if not isinstance(listed, list):
        return None
    names = set()
    for entry in listed:
        if isinstance(entry, str):
            names.add(entry)
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            names.add(entry["name"])
    return frozenset(names)


def classes_without_mirror(features: Mapping[str, frozenset[str] | None]) -> list[str]:
    """The GatewayClasses (by name, sorted) that publish their features and lack the mirror.

    ``features`` maps each GatewayClass behind the route's Gateways to what
    :func:`supported_features` read from it (None: unknown, taken as able to mirror).
    """
    return sorted(
        name
        for name, names in features.items()
        if names is not None and MIRROR_FEATURE not in names
    )


def mirror_problem(classes: list[str]) -> Problem | None:
    """What to tell the user when the route's GatewayClasses cannot mirror (None if they
    can, as far as they say)."""
    if not classes:
        return None
    which = ", ".join(classes)
    plural = "es" if len(classes) > 1 else ""
    return Problem(
        MIRROR_UNSUPPORTED,
        f"the shadow rollout's mirror was left off the HTTPRoute: GatewayClass{plural} "
        f"{which} does not list {MIRROR_FEATURE} in status.supportedFeatures, and a route "
        "with a RequestMirror filter it does not implement may fail every request; stable "
        "traffic is served, the candidate gets none, so the rollout cannot be judged. Use "
        "spec.routing.router istio, or a Gateway whose implementation supports "
        f"{MIRROR_FEATURE}",
    )
