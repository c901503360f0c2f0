"""A shadow rollout on router gatewayApi whose GatewayClass cannot mirror: the route keeps
serving stable without the RequestMirror filter, the user is told why, nothing is promoted."""

from __future__ import annotations

from typing import Any

import pytest

from modelpilot_operator.api.v1alpha1 import ModelDeployment
from modelpilot_operator.builders.gateway import MIRROR_FEATURE, MIRROR_UNSUPPORTED
from modelpilot_operator.k8s.gateways import GatewayFeatures
from modelpilot_operator.k8s.kinds import GATEWAY, GATEWAY_CLASS, HTTP_ROUTE
from tests.fakeprom import FakePrometheus, VersionData
from tests.unit.k8s.fake import FakeApi
from tests.unit.rollout.harness import make_spec

from .harness import KEY, Cluster, model_deployment

SHADOW = {
    "strategy": "shadow",
    "iterations": 1,
    "analysis": {"minSamples": 10, "checks": [{"name": "errors", "builtin": "errorRate"}]},
}
BASIC = ["Gateway", "HTTPRoute", "HTTPRouteNamedRouteRule"]


def shadow_on_gateway(namespace: str | None = "gw") -> dict[str, Any]:
    body = model_deployment(make_spec(**SHADOW).to_wire())
    ref: dict[str, Any] = {"name": "public"}
    if namespace is not None:
        ref["namespace"] = namespace
    body["spec"]["routing"] = {"router": "gatewayApi", "parentRefs": [ref]}
    return body


def add_gateway(api: FakeApi, features: list[Any] | None, namespace: str = "gw") -> None:
    api.put(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "public", "namespace": namespace},
            "spec": {"gatewayClassName": "edge", "listeners": []},
        }
    )
    gc: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "edge"},
        "spec": {"controllerName": "example.com/edge"},
    }
    if features is not None:
        gc["status"] = {"supportedFeatures": features}
    api.put(gc)


def healthy() -> FakePrometheus:
    # Every version answers: analysis would pass even for a candidate that gets nothing.
    return FakePrometheus(lambda v, at, s: VersionData(codes={"200": 1000.0}))


def run(cluster: Cluster, passes: int = 40) -> None:
    for _ in range(passes):
        cluster.step(seconds=10)
        if cluster.status().get("phase") in ("Promoted", "RolledBack", "Failed"):
            return


def mirror_filters(cluster: Cluster) -> list[dict[str, Any]]:
    route = cluster.api.get(HTTP_ROUTE, *KEY)
    assert route is not None
    return [
        f
        for rule in route["spec"]["rules"]
        for f in rule.get("filters") or []
        if f.get("type") == "RequestMirror"
    ]


def degraded(cluster: Cluster) -> dict[str, Any]:
    conds = {c["type"]: c for c in cluster.status().get("conditions", [])}
    return dict(conds["Degraded"])


def test_a_class_without_the_mirror_keeps_stable_serving_and_never_promotes() -> None:
    cluster = Cluster(shadow_on_gateway(), healthy())
    add_gateway(cluster.api, [{"name": f} for f in BASIC])
    run(cluster)
    status = cluster.status()
    # The route serves stable alone, without the filter that would fail every request,
    assert mirror_filters(cluster) == []
    assert {k: v for k, v in status["weights"].items() if v} == {"v1": 100}
    # the rollout waits instead of judging mirrored traffic that never arrives,
    assert status["phase"] == "Progressing"
    assert status.get("stepStartedAt") is None
    assert "GatewayClass edge" in status["message"]
    assert "Promoted" not in cluster.events()
    # and the condition and a Warning Event say why and what to do.
    cond = degraded(cluster)
    assert cond["status"] == "True"
    assert cond["reason"] == MIRROR_UNSUPPORTED
    assert "GatewayClass edge" in cond["message"]
    assert "router istio" in cond["message"]
    warnings = [
        o
        for (k, _, _), o in cluster.api.objects.items()
        if k == "Event" and o["reason"] == MIRROR_UNSUPPORTED
    ]
    assert len(warnings) == 1
    assert warnings[0]["type"] == "Warning"
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True"


def test_the_gateway_namespace_defaults_to_the_model_deployments() -> None:
    cluster = Cluster(shadow_on_gateway(namespace=None), healthy())
    add_gateway(cluster.api, ["Gateway", "HTTPRoute"], namespace="ml")
    run(cluster, passes=10)
    assert mirror_filters(cluster) == []
    assert degraded(cluster)["reason"] == MIRROR_UNSUPPORTED


@pytest.mark.parametrize(
    "features",
    [[{"name": f} for f in [*BASIC, MIRROR_FEATURE]], None],
    ids=["supported", "unknown"],
)
def test_a_class_that_mirrors_or_does_not_say_gets_the_mirror(features: Any) -> None:
    cluster = Cluster(shadow_on_gateway(), healthy())
    add_gateway(cluster.api, features)
    seen_mirror = False
    for _ in range(40):
        cluster.step(seconds=10)
        seen_mirror = seen_mirror or bool(mirror_filters(cluster))
        if cluster.status().get("phase") == "Promoted":
            break
    assert seen_mirror
    assert cluster.status()["phase"] == "Promoted"
    assert MIRROR_UNSUPPORTED not in cluster.events()
    assert degraded(cluster)["status"] == "False"


def test_no_gateway_found_is_unknown() -> None:
    cluster = Cluster(shadow_on_gateway(), healthy())
    run(cluster, passes=10)
    assert mirror_filters(cluster)
    assert degraded(cluster)["status"] == "False"


def test_gateway_and_class_are_read_once_per_ttl() -> None:
    api = FakeApi()
    add_gateway(api, ["HTTPRoute"])
    md = ModelDeployment.model_validate(shadow_on_gateway())
    calls: list[str] = []
    get = api.get

    def counting(kind: Any, namespace: Any, name: str) -> Any:
        calls.append(kind.kind)
        return get(kind, namespace, name)

    api.get = counting  # type: ignore[method-assign]
    now = [0.0]
    features = GatewayFeatures(api, ttl_s=30, clock=lambda: now[0])
    assert features.classes(md) == {"edge": frozenset({"HTTPRoute"})}
    now[0] = 29
    features.classes(md)
    assert calls == [GATEWAY.kind, GATEWAY_CLASS.kind]
    now[0] = 31
    features.classes(md)
    assert calls == [GATEWAY.kind, GATEWAY_CLASS.kind] * 2
