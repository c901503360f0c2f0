"""Per ModelDeployment: the stable Service and the traffic route.

Istio: a VirtualService for the stable Service's host, with an optional A/B rule (header or
cookie matches to the candidate) before the primary weighted rule, and a mirror for shadow
rollouts; a DestinationRule with one subset per version. Gateway API: an HTTPRoute whose
backendRefs are the per-version Services, with header matches and a RequestMirror filter.
``read_*`` functions turn a live route back into :class:`Traffic`, the weights the rollout
engine trusts.
"""

from __future__ import annotations

import re
from typing import Any

from ..api.v1alpha1 import ModelDeployment, TrafficMatch
from .meta import (
    HTTP_PORT,
    LABEL_MODEL,
    LABEL_VERSION,
    md_name,
    md_namespace,
    model_labels,
    object_meta,
    version_object_name,
)
from .traffic import Traffic
from .workload import stable_service_ports

PRIMARY_RULE = "primary"
MATCH_RULE = "ab-test"

ISTIO_API = "networking.istio.io/v1"
GATEWAY_API = "gateway.networking.k8s.io/v1"


def service_host(md: ModelDeployment) -> str:
    return f"{md_name(md)}.{md_namespace(md)}.svc.cluster.local"


def build_stable_service(md: ModelDeployment) -> dict[str, Any]:
    """The Service clients call for the model.

    With Istio it selects the pods of every version and the VirtualService splits by subset.
    With Gateway API or no router it selects the stable version: the HTTPRoute addresses the
    per-version Services, and without a router switching ``spec.stable`` switches traffic.
    """
    selector = {LABEL_MODEL: md_name(md)}
    if md.spec.routing.router != "istio":
        selector[LABEL_VERSION] = md.spec.stable
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(
            md, md_name(md), {**model_labels(md), "app.kubernetes.io/component": "model"}
        ),
        "spec": {"type": "ClusterIP", "selector": selector, "ports": stable_service_ports()},
    }


# -- Istio ------------------------------------------------------------------------------


def _cookie_regex(name: str, pattern: str) -> str:
    return f"^(.*?;\\s*)?{re.escape(name)}={pattern}(;.*)?$"


def istio_match(m: TrafficMatch) -> dict[str, Any]:
    """One TrafficMatch as an Istio HTTPMatchRequest."""
    if m.header is not None:
        if m.exact is not None:
            cond = {"exact": m.exact}
        elif m.prefix is not None:
            cond = {"prefix": m.prefix}
        else:
            cond = {"regex": str(m.regex)}
        return {"headers": {m.header.lower(): cond}}
    cookie = str(m.cookie)
    if m.exact is not None:
        pattern = re.escape(m.exact)
    elif m.prefix is not None:
        pattern = re.escape(m.prefix) + "[^;]*"
    else:
        pattern = f"({m.regex})"
    return {"headers": {"cookie": {"regex": _cookie_regex(cookie, pattern)}}}


def build_virtual_service(md: ModelDeployment, traffic: Traffic) -> dict[str, Any]:
    host = service_host(md)
    routing = md.spec.routing
    http: list[dict[str, Any]] = []
    if traffic.match_version is not None and traffic.match:
        http.append(
            {
                "name": MATCH_RULE,
                "match": [istio_match(m) for m in traffic.match],
                "route": [{"destination": {"host": host, "subset": traffic.match_version}}],
            }
        )
    primary: dict[str, Any] = {
        "name": PRIMARY_RULE,
        "route": [
            {"destination": {"host": host, "subset": v}, "weight": w}
            for v, w in sorted(traffic.weights.items())
        ],
    }
    if traffic.mirror_version is not None and traffic.mirror_percent > 0:
        primary["mirror"] = {"host": host, "subset": traffic.mirror_version}
        primary["mirrorPercentage"] = {"value": float(traffic.mirror_percent)}
    http.append(primary)
    spec: dict[str, Any] = {"hosts": sorted({host, *routing.hosts})}
    if routing.gateways:
        # Naming gateways replaces the implicit "mesh": keep in-mesh callers routed too.
        spec["gateways"] = sorted({*routing.gateways, "mesh"})
    spec["http"] = http
    return {
        "apiVersion": ISTIO_API,
        "kind": "VirtualService",
        "metadata": object_meta(md, md_name(md), model_labels(md)),
        "spec": spec,
    }


def build_destination_rule(md: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": ISTIO_API,
        "kind": "DestinationRule",
        "metadata": object_meta(md, md_name(md), model_labels(md)),
        "spec": {
            "host": service_host(md),
            "subsets": [
                {"name": v.name, "labels": {LABEL_VERSION: v.name}}
                for v in sorted(md.spec.versions, key=lambda v: v.name)
            ],
        },
    }


def read_virtual_service(vs: dict[str, Any]) -> Traffic | None:
    """The traffic a live VirtualService carries (None if it is not one of ours)."""
    http = vs.get("spec", {}).get("http") or []
    primary = next((r for r in http if r.get("name") == PRIMARY_RULE), None)
    if primary is None:
        return None
    routes = primary.get("route") or []
    weights: dict[str, int] = {}
    for r in routes:
        subset = r.get("destination", {}).get("subset")
        if subset is None:
            return None
        weights[subset] = int(r.get("weight", 100 if len(routes) == 1 else 0))
    mirror = primary.get("mirror")
    mirror_version = mirror.get("subset") if isinstance(mirror, dict) else None
    mirror_percent = 0
    if mirror_version is not None:
        mirror_percent = round(float(primary.get("mirrorPercentage", {}).get("value", 100.0)))
    ab = next((r for r in http if r.get("name") == MATCH_RULE), None)
    match_version = None
    if ab is not None:
        match_version = (ab.get("route") or [{}])[0].get("destination", {}).get("subset")
    try:
        return Traffic(
            weights=weights,
            mirror_version=mirror_version,
            mirror_percent=mirror_percent,
            match_version=match_version,
        )
    except ValueError:
        return None


# -- Gateway API ------------------------------------------------------------------------


def gateway_match(m: TrafficMatch) -> dict[str, Any]:
    """One TrafficMatch as a Gateway API HTTPHeaderMatch (prefixes become a regex)."""
    if m.header is not None:
        if m.exact is not None:
            return {"type": "Exact", "name": m.header, "value": m.exact}
        if m.prefix is not None:
            return {
                "type": "RegularExpression",
                "name": m.header,
                "value": f"^{re.escape(m.prefix)}.*",
            }
        return {"type": "RegularExpression", "name": m.header, "value": str(m.regex)}
    cookie = str(m.cookie)
    if m.exact is not None:
        pattern = re.escape(m.exact)
    elif m.prefix is not None:
        pattern = re.escape(m.prefix) + "[^;]*"
    else:
        pattern = f"({m.regex})"
    return {"type": "RegularExpression", "name": "Cookie", "value": _cookie_regex(cookie, pattern)}


def _backend(md: ModelDeployment, version: str) -> dict[str, Any]:
    return {"name": version_object_name(md, version), "port": HTTP_PORT}


def build_http_route(md: ModelDeployment, traffic: Traffic) -> dict[str, Any]:
    routing = md.spec.routing
    if routing.parent_refs:
        parents = [p.model_dump(by_alias=True, exclude_none=True) for p in routing.parent_refs]
        for p in parents:
            p["group"] = "" if p["kind"] == "Service" else "gateway.networking.k8s.io"
    else:
        # No Gateway named: attach to the stable Service (GAMMA, east-west mesh routing).
        parents = [{"group": "", "kind": "Service", "name": md_name(md), "port": HTTP_PORT}]
    rules: list[dict[str, Any]] = []
    if traffic.match_version is not None and traffic.match:
        rules.append(
            {
                "name": MATCH_RULE,
                "matches": [{"headers": [gateway_match(m)]} for m in traffic.match],
                "backendRefs": [{**_backend(md, traffic.match_version), "weight": 1}],
            }
        )
    primary: dict[str, Any] = {
        "name": PRIMARY_RULE,
        "backendRefs": [
            {**_backend(md, v), "weight": w} for v, w in sorted(traffic.weights.items())
        ],
    }
    if traffic.mirror_version is not None and traffic.mirror_percent > 0:
        mirror: dict[str, Any] = {"backendRef": _backend(md, traffic.mirror_version)}
        if traffic.mirror_percent < 100:
            mirror["percent"] = traffic.mirror_percent
        primary["filters"] = [{"type": "RequestMirror", "requestMirror": mirror}]
    rules.append(primary)
    spec: dict[str, Any] = {"parentRefs": parents}
    if routing.hosts and any(p.get("kind", "Gateway") == "Gateway" for p in parents):
        spec["hostnames"] = sorted(routing.hosts)
    spec["rules"] = rules
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": object_meta(md, md_name(md), model_labels(md)),
        "spec": spec,
    }


def read_http_route(route: dict[str, Any], name: str) -> Traffic | None:
    """The traffic a live HTTPRoute of ModelDeployment ``name`` carries."""
    rules = route.get("spec", {}).get("rules") or []
    primary = next((r for r in rules if r.get("name") == PRIMARY_RULE), None)
    if primary is None:
        return None
    prefix = f"{name}-"

    def version_of(ref: dict[str, Any]) -> str | None:
        backend = str(ref.get("name", ""))
        return backend[len(prefix) :] if backend.startswith(prefix) else None

    refs = primary.get("backendRefs") or []
    weights: dict[str, int] = {}
    for ref in refs:
        version = version_of(ref)
        if version is None:
            return None
        weights[version] = int(ref.get("weight", 1))
    total = sum(weights.values())
    if total and total != 100:
        # Gateway API weights are relative; the rollout reasons in percent.
        weights = {v: 100 * w // total for v, w in weights.items()}
        largest = max(weights, key=lambda v: (weights[v], v))
        weights[largest] += 100 - sum(weights.values())
    mirror_version, mirror_percent = None, 0
    for f in primary.get("filters") or []:
        if f.get("type") == "RequestMirror":
            mirror = f.get("requestMirror", {})
            mirror_version = version_of(mirror.get("backendRef", {}))
            mirror_percent = int(mirror.get("percent", 100))
    ab = next((r for r in rules if r.get("name") == MATCH_RULE), None)
    match_version = version_of((ab.get("backendRefs") or [{}])[0]) if ab else None
    try:
        return Traffic(
            weights=weights,
            mirror_version=mirror_version,
            mirror_percent=mirror_percent if mirror_version else 0,
            match_version=match_version,
        )
    except ValueError:
        return None


def build_routes(md: ModelDeployment, traffic: Traffic) -> list[dict[str, Any]]:
    """The route objects for the ModelDeployment's router (none for router ``none``)."""
    router = md.spec.routing.router
    if router == "istio":
        return [build_virtual_service(md, traffic), build_destination_rule(md)]
    if router == "gatewayApi":
        return [build_http_route(md, traffic)]
    return []


def read_route(md: ModelDeployment, route: dict[str, Any]) -> Traffic | None:
    """The traffic a live route object (VirtualService or HTTPRoute) carries."""
    if route.get("kind") == "VirtualService":
        return read_virtual_service(route)
    if route.get("kind") == "HTTPRoute":
        return read_http_route(route, md_name(md))
    return None
