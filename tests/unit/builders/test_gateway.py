"""Whether a route's Gateways can mirror: read from the GatewayClasses' supportedFeatures."""

from __future__ import annotations

from typing import Any

from modelpilot_operator.api.v1alpha1 import ModelDeployment
from modelpilot_operator.builders.gateway import (
    MIRROR_FEATURE,
    MIRROR_UNSUPPORTED,
    classes_without_mirror,
    gateway_refs,
    mirror_problem,
    supported_features,
)


def gateway_class(features: Any) -> dict[str, Any]:
    status = {} if features is None else {"supportedFeatures": features}
    return {"kind": "GatewayClass", "metadata": {"name": "c"}, "status": status}


def test_features_are_read_as_objects_or_plain_strings() -> None:
    objects = gateway_class([{"name": "HTTPRoute"}, {"name": MIRROR_FEATURE}])
    assert supported_features(objects) == frozenset({"HTTPRoute", MIRROR_FEATURE})
    strings = gateway_class(["HTTPRoute", "Gateway"])
    assert supported_features(strings) == frozenset({"HTTPRoute", "Gateway"})
    odd = gateway_class([{"name": "HTTPRoute"}, 7, {"other": 1}])
    assert supported_features(odd) == frozenset({"HTTPRoute"})


def test_no_list_is_unknown_and_an_empty_list_is_known() -> None:
    assert supported_features(gateway_class(None)) is None
    assert supported_features(None) is None
    assert supported_features({"metadata": {"name": "c"}}) is None
    assert supported_features(gateway_class([])) == frozenset()


def test_only_classes_that_say_so_lack_the_mirror() -> None:
    features = {
        "traefik": frozenset({"HTTPRoute", "Gateway"}),
        "envoy": frozenset({"HTTPRoute", MIRROR_FEATURE}),
        "old": None,
        "bare": frozenset(),
    }
    assert classes_without_mirror(features) == ["bare", "traefik"]
    assert classes_without_mirror({"old": None}) == []
    assert classes_without_mirror({}) == []


def test_the_problem_names_the_class_and_what_to_do() -> None:
    assert mirror_problem([]) is None
    problem = mirror_problem(["traefik"])
    assert problem is not None
    assert problem.reason == MIRROR_UNSUPPORTED
    assert "GatewayClass traefik" in problem.message
    assert "router istio" in problem.message
    assert MIRROR_FEATURE in problem.message


def test_gateway_refs_default_to_the_model_deployments_namespace() -> None:
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "modelpilot.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "fraud", "namespace": "ml"},
            "spec": {
                "versions": [{"name": "v1", "model": {"storageUri": "s3://m/1/"}}],
                "stable": "v1",
                "routing": {
                    "router": "gatewayApi",
                    "parentRefs": [
                        {"name": "public"},
                        {"name": "shared", "namespace": "gw"},
                        {"name": "public"},
                        {"name": "fraud", "kind": "Service"},
                    ],
                },
            },
        }
    )
    assert gateway_refs(md) == [("ml", "public"), ("gw", "shared")]
