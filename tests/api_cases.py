"""ModelDeployment examples shared by the unit tests and the real-API-server tests.

Each invalid case names the message pydantic must give and the message the API server must
give at admission (None where only the operator can tell, e.g. a PromQL syntax error).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


def minimal() -> dict[str, Any]:
    """The smallest valid ModelDeployment."""
    return {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud"},
        "spec": {
            "versions": [{"name": "v1", "model": {"storageUri": "s3://models/fraud/1/"}}],
            "stable": "v1",
        },
    }


def full() -> dict[str, Any]:
    """Every part of the API in use: the sketch from the architecture notes."""
    return {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud"},
        "spec": {
            "versions": [
                {
                    "name": "v1",
                    "model": {
                        "format": "onnx",
                        "storageUri": "s3://models/fraud/1/",
                        "credentialsSecret": "s3-creds",
                    },
                    "runtime": {
                        "executionProviders": ["tensorrt", "cuda", "cpu"],
                        "batching": {"maxBatchSize": 32, "maxDelay": "2ms"},
                        "intraOpThreads": 2,
                        "quantization": {"mode": "dynamicInt8"},
                        "cache": {"enabled": True, "maxEntries": 5000},
                        "env": [{"name": "LOG_LEVEL", "value": "debug"}],
                    },
                    "resources": {"gpu": 1, "cpu": 2, "memory": "4Gi"},
                    "scaling": {
                        "minReplicas": 2,
                        "maxReplicas": 10,
                        "metrics": [
                            {"type": "cpu", "target": 70},
                            {"type": "inflight", "target": 8},
                        ],
                    },
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10"},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
                {
                    "name": "v2",
                    "model": {
                        "storageUri": "https://models.example.com/fraud/2/model.onnx",
                        "checksum": "sha256:" + "a" * 64,
                    },
                },
            ],
            "stable": "v1",
            "rollout": {
                "candidate": "v2",
                "strategy": "canary",
                "steps": [{"weight": 5, "pause": "2m"}, {"weight": 25}, {"weight": 50}],
                "analysis": {
                    "interval": "1m",
                    "minSamples": 200,
                    "failureLimit": 2,
                    "warmup": "30s",
                    "confidence": 0.95,
                    "checks": [
                        {"name": "error-rate", "builtin": "errorRate", "tolerance": 0.005},
                        {"name": "p99", "builtin": "latencyP99", "maxRatio": 1.2},
                        {"name": "agreement", "builtin": "predictionDivergence", "max": 0.05},
                        {
                            "name": "business",
                            "query": 'sum(rate(x_total{version="{{ version }}"}[{{ interval }}]))',
                            "min": 1,
                        },
                    ],
                },
                "promotion": "manual",
            },
            "routing": {"router": "istio", "hosts": ["fraud.ml.svc.cluster.local"]},
        },
    }


TORCHSERVE_TENSORS: dict[str, Any] = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
}


def torchserve() -> dict[str, Any]:
    """A TorchServe .mar with its declared tensors."""
    obj = minimal()
    obj["spec"]["versions"][0]["model"] = {
        "format": "torchserve",
        "storageUri": "s3://models/fraud-ts/1/",
    }
    obj["spec"]["versions"][0]["runtime"] = {"torchserve": copy.deepcopy(TORCHSERVE_TENSORS)}
    return obj


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of base with the dotted path set (list indices as numbers); None deletes."""
    obj = copy.deepcopy(base)
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = obj
    for k in keys[:-1]:
        node = node[k]
    if value is None:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return obj


@dataclass(frozen=True)
class Case:
    """One example: the object, and for invalid ones the expected messages."""

    id: str
    obj: dict[str, Any]
    pydantic_message: str | None = None
    api_message: str | None = None
    api_rejects: bool = True
    notes: str = field(default="", compare=False)


def _ab(router: str = "gatewayApi") -> dict[str, Any]:
    obj = _with(full(), "spec.rollout.strategy", "abTest")
    obj = _with(obj, "spec.rollout.match", [{"header": "x-user-group", "exact": "beta"}])
    return _with(obj, "spec.routing", {"router": router, "parentRefs": [{"name": "public"}]})


VALID: list[Case] = [
    Case("minimal", minimal()),
    Case("full", full()),
    Case("ab-test-gateway-api", _ab()),
    Case(
        "ab-test-cookie",
        _with(_ab("istio"), "spec.rollout.match", [{"cookie": "canary", "regex": "^yes$"}]),
    ),
    Case(
        "shadow",
        _with(_with(full(), "spec.rollout.strategy", "shadow"), "spec.rollout.mirrorPercent", 50),
    ),
    Case(
        "blue-green-without-router",
        _with(
            _with(full(), "spec.rollout.strategy", "blueGreen"),
            "spec.routing",
            {"router": "none"},
        ),
    ),
    Case("torchserve", torchserve()),
    Case(
        "torchserve-raw",
        _with(
            torchserve(),
            "spec.versions.0.runtime.torchserve",
            {
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]}],
                "requestFormat": "raw",
                "workers": 2,
                "responseTimeout": "2m",
            },
        ),
    ),
    Case(
        "pvc-and-path-uris",
        _with(minimal(), "spec.versions.0.model.storageUri", "pvc://models/fraud/1"),
    ),
    Case("replicas-set", _with(minimal(), "spec.replicas", 3)),
]

INVALID: list[Case] = [
    Case(
        "stable-not-a-version",
        _with(minimal(), "spec.stable", "v9"),
        "spec.stable must name one of spec.versions",
        "spec.stable must name one of spec.versions",
    ),
    Case(
        "candidate-not-a-version",
        _with(full(), "spec.rollout.candidate", "v3"),
        "spec.rollout.candidate must name one of spec.versions",
        "spec.rollout.candidate must name one of spec.versions",
    ),
    Case(
        "candidate-is-stable",
        _with(full(), "spec.rollout.candidate", "v1"),
        "spec.rollout.candidate must differ from spec.stable",
        "spec.rollout.candidate must differ from spec.stable",
    ),
    Case(
        "duplicate-version-names",
        _with(full(), "spec.versions.1.name", "v1"),
        "version names must be unique; repeated: v1",
        "Duplicate value",
    ),
    Case(
        "step-weight-over-100",
        _with(full(), "spec.rollout.steps", [{"weight": 50}, {"weight": 101}]),
        "less than or equal to 100",
        "should be less than or equal to 100",
    ),
    Case(
        "step-weights-decrease",
        _with(full(), "spec.rollout.steps", [{"weight": 50}, {"weight": 20}]),
        "step weights must not decrease",
        "step weights must not decrease",
    ),
    Case(
        "storage-scheme",
        _with(minimal(), "spec.versions.0.model.storageUri", "ftp://models/fraud/1"),
        "unsupported storageUri 'ftp://models/fraud/1'",
        "should match",
    ),
    Case(
        "bad-duration",
        _with(full(), "spec.rollout.analysis.interval", "5 minutes"),
        "invalid duration '5 minutes'",
        "should match",
    ),
    Case(
        "ab-test-without-match",
        _with(full(), "spec.rollout.strategy", "abTest"),
        "an abTest rollout needs at least one match",
        "an abTest rollout needs at least one match",
    ),
    Case(
        "match-header-and-cookie",
        _with(_ab(), "spec.rollout.match", [{"header": "x-a", "cookie": "c", "exact": "1"}]),
        "a match names exactly one of header or cookie",
        "a match names exactly one of header or cookie",
    ),
    Case(
        "match-two-values",
        _with(_ab(), "spec.rollout.match", [{"header": "x-a", "exact": "1", "regex": "1"}]),
        "a match sets exactly one of exact, prefix or regex",
        "a match sets exactly one of exact, prefix or regex",
    ),
    Case(
        "check-builtin-and-query",
        _with(
            full(),
            "spec.rollout.analysis.checks",
            [{"name": "x", "builtin": "errorRate", "query": "up", "max": 1}],
        ),
        "a check sets exactly one of builtin or query",
        "a check sets exactly one of builtin or query",
    ),
    Case(
        "query-without-bounds",
        _with(full(), "spec.rollout.analysis.checks", [{"name": "x", "query": "up"}]),
        "a query check needs min or max",
        "a query check needs min or max",
    ),
    Case(
        "query-not-promql",
        _with(
            full(),
            "spec.rollout.analysis.checks",
            [{"name": "x", "query": "sum(rate(x[", "max": 1}],
        ),
        "query is not valid PromQL",
        api_rejects=False,
        notes="PromQL syntax is checked by the operator and reported in status",
    ),
    Case(
        "query-unknown-variable",
        _with(
            full(),
            "spec.rollout.analysis.checks",
            [{"name": "x", "query": "up{job='{{ team }}'}", "max": 1}],
        ),
        "query template does not render: 'team' is undefined",
        api_rejects=False,
    ),
    Case(
        "max-ratio-on-error-rate",
        _with(
            full(),
            "spec.rollout.analysis.checks",
            [{"name": "x", "builtin": "errorRate", "maxRatio": 2}],
        ),
        "maxRatio applies only to the latency built-ins",
        "maxRatio applies only to the latency built-ins",
    ),
    Case(
        "tolerance-on-latency",
        _with(
            full(),
            "spec.rollout.analysis.checks",
            [{"name": "x", "builtin": "latencyP99", "tolerance": 0.01}],
        ),
        "tolerance applies only to the errorRate built-in",
        "tolerance applies only to the errorRate built-in",
    ),
    Case(
        "max-replicas-below-min",
        _with(full(), "spec.versions.0.scaling", {"minReplicas": 3, "maxReplicas": 2}),
        "maxReplicas must be at least minReplicas",
        "maxReplicas must be at least minReplicas",
    ),
    Case(
        "queue-smaller-than-batch",
        _with(full(), "spec.versions.0.runtime.batching", {"maxBatchSize": 64, "maxQueueSize": 8}),
        "maxQueueSize must be at least maxBatchSize",
        "maxQueueSize must be at least maxBatchSize",
    ),
    Case(
        "canary-without-router",
        _with(full(), "spec.routing", {"router": "none"}),
        "router none supports only the blueGreen strategy",
        "router none supports only the blueGreen strategy",
    ),
    Case(
        "torchserve-without-tensors",
        _with(minimal(), "spec.versions.0.model.format", "torchserve"),
        "a torchserve model must declare its tensors",
        "a torchserve model must declare its tensors",
    ),
    Case(
        "torchserve-settings-on-onnx",
        _with(torchserve(), "spec.versions.0.model.format", "onnx"),
        "runtime.torchserve must be left out unless model.format is torchserve",
        "runtime.torchserve must be left out unless model.format is torchserve",
    ),
    Case(
        "torchserve-raw-with-fp32-input",
        _with(torchserve(), "spec.versions.0.runtime.torchserve.requestFormat", "raw"),
        "requestFormat raw must have exactly one BYTES input",
        "requestFormat raw must have exactly one BYTES input",
    ),
    Case(
        "torchserve-zero-dimension",
        _with(
            torchserve(),
            "spec.versions.0.runtime.torchserve.inputs.0.shape",
            [-1, 0],
        ),
        "tensor dimensions must be positive or -1",
        "tensor dimensions must be positive or -1",
    ),
    Case(
        "quantized-torchserve",
        _with(
            _with(full(), "spec.versions.0.model.format", "torchserve"),
            "spec.versions.0.runtime.torchserve",
            TORCHSERVE_TENSORS,
        ),
        "quantization is only available for onnx models",
        "quantization is only available for onnx models",
    ),
    Case(
        "repeated-provider",
        _with(full(), "spec.versions.0.runtime.executionProviders", ["cuda", "cuda"]),
        "executionProviders must not repeat a provider",
        "Duplicate value",
    ),
    Case(
        "unknown-provider",
        _with(full(), "spec.versions.0.runtime.executionProviders", ["rocm"]),
        "Input should be 'tensorrt', 'cuda' or 'cpu'",
        'Unsupported value: "rocm"',
    ),
    Case(
        "version-name-not-dns",
        _with(minimal(), "spec.versions.0.name", "V_1"),
        "String should match pattern",
        "should match",
    ),
    Case(
        "unknown-field",
        _with(minimal(), "spec.replicaz", 3),
        "Extra inputs are not permitted",
        'unknown field "spec.replicaz"',
    ),
    Case(
        "name-too-long",
        _with(minimal(), "metadata.name", "a" * 41),
        "metadata.name must be at most 40 characters",
        "metadata.name must be at most 40 characters",
    ),
    Case(
        "negative-gpu",
        _with(minimal(), "spec.versions.0.resources", {"gpu": -1}),
        "greater than or equal to 0",
        "should be greater than or equal to 0",
    ),
    Case(
        "bad-quantity",
        _with(minimal(), "spec.versions.0.resources", {"memory": "4 GB"}),
        "String should match pattern",
        "should match",
    ),
    Case(
        "no-versions",
        _with(minimal(), "spec.versions", []),
        "at least 1 item",
        "should have at least 1 items",
    ),
]
