"""ModelDeployments (with the status the rollout engine would write) for the builder tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from modelpilot_operator.api.v1alpha1 import ModelDeployment, ModelDeploymentStatus
from modelpilot_operator.builders import BuildOptions
from tests.api_cases import full, minimal, torchserve

UID = "0b7c3f0e-5d2a-4c1e-9a8b-1f2e3d4c5b6a"
IMAGE = "ghcr.io/modelpilot/runtime:0.1.0"


def with_meta(obj: dict[str, Any], namespace: str = "ml", generation: int = 3) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"] |= {"namespace": namespace, "uid": UID, "generation": generation}
    return obj


@dataclass(frozen=True)
class BuildCase:
    id: str
    obj: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)
    service_monitor: bool = False

    def md(self) -> ModelDeployment:
        md = ModelDeployment.model_validate(self.obj)
        if self.status:
            md.status = ModelDeploymentStatus.model_validate(self.status)
        return md

    def options(self) -> BuildOptions:
        return BuildOptions(default_image=IMAGE, service_monitor=self.service_monitor)


def _spec(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["spec"] |= changes
    return obj


def _rollout(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["spec"]["rollout"] |= changes
    return obj


_FULL = with_meta(full())

CASES = [
    BuildCase("minimal", with_meta(minimal(), namespace="default", generation=1)),
    BuildCase(
        "canary-istio",
        _FULL,
        status={"phase": "Progressing", "desiredWeights": {"v1": 75, "v2": 25}},
        service_monitor=True,
    ),
    BuildCase(
        "ab-test-istio-cookie",
        _rollout(
            _FULL,
            strategy="abTest",
            match=[
                {"cookie": "canary", "exact": "yes"},
                {"header": "x-user-group", "prefix": "beta"},
            ],
        ),
        status={
            "phase": "Progressing",
            "desiredWeights": {"v1": 100, "v2": 0},
            "stepStartedAt": "2026-01-01T00:00:00Z",
        },
    ),
    BuildCase(
        "shadow-gateway-api",
        _spec(
            _rollout(_FULL, strategy="shadow", mirrorPercent=50),
            routing={
                "router": "gatewayApi",
                "hosts": ["fraud.example.com"],
                "parentRefs": [{"name": "public", "namespace": "gateways"}],
            },
        ),
        status={"phase": "Progressing", "desiredWeights": {"v1": 100}, "mirrorPercent": 50},
    ),
    BuildCase(
        "ab-test-gateway-api-mesh",
        _spec(
            _rollout(
                _FULL,
                strategy="abTest",
                match=[
                    {"header": "x-user-group", "exact": "beta"},
                    {"cookie": "ab", "regex": "b+"},
                ],
            ),
            routing={"router": "gatewayApi"},
        ),
        status={
            "phase": "AwaitingPromotion",
            "desiredWeights": {"v1": 100},
            "stepStartedAt": "2026-01-01T00:00:00Z",
        },
    ),
    BuildCase(
        "router-none-pvc",
        with_meta(
            {
                "apiVersion": "modelpilot.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "iris"},
                "spec": {
                    "versions": [
                        {
                            "name": "blue",
                            "model": {"storageUri": "pvc://models/iris/1"},
                            "runtime": {
                                "executionProviders": ["cpu"],
                                "batching": {"enabled": False},
                                "warmup": {"enabled": False},
                                "graphOptimization": "disabled",
                            },
                            "resources": {"cpu": "500m", "memory": "512Mi"},
                        },
                        {"name": "green", "model": {"storageUri": "file:///srv/models/iris/2"}},
                    ],
                    "stable": "blue",
                    "replicas": 3,
                    "routing": {"router": "none"},
                },
            }
        ),
    ),
    BuildCase(
        "torchserve",
        _spec(
            with_meta(torchserve()),
            versions=[
                {
                    **torchserve()["spec"]["versions"][0],
                    "runtime": {
                        **torchserve()["spec"]["versions"][0]["runtime"],
                        "batching": {"maxBatchSize": 4, "maxDelay": "5ms"},
                    },
                    "resources": {"cpu": "1", "memory": "2Gi"},
                }
            ],
        ),
    ),
]
