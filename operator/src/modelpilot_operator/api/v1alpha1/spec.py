"""ModelDeployment spec: what the user asks for.

Every cross-field rule is written twice on purpose: as CEL (``x-kubernetes-validations``), so
the API server rejects the object at admission, and as a pydantic validator, so the operator
and the CLI give the same message offline. A property test keeps the two in agreement.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from .common import (
    ApiModel,
    Duration,
    LabelValue,
    Name,
    Quantity,
    ShortText,
    cel,
    parse_duration,
)
from .promql import validate_query_template

ModelFormat = Literal["onnx", "torchserve"]
ExecutionProvider = Literal["tensorrt", "cuda", "cpu"]
GraphOptimization = Literal["disabled", "basic", "extended", "all"]
Strategy = Literal["canary", "abTest", "shadow", "blueGreen"]
PromotionMode = Literal["auto", "manual"]
Router = Literal["istio", "gatewayApi", "none"]
BuiltinCheck = Literal["errorRate", "latencyP50", "latencyP99", "predictionDivergence"]
TensorDatatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip

STORAGE_URI_PATTERN = r"^((s3|gs|https?|file|pvc)://[^\s]+|/[^\s]*)$"


def _check_storage_uri(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(STORAGE_URI_PATTERN, value):
        raise ValueError(
            f"unsupported storageUri {value!r}: use s3://, gs://, http(s)://, file://, "
            "pvc://<claim>/<path> or an absolute path"
        )
    return value


StorageUri = Annotated[
    str,
    StringConstraints(pattern=STORAGE_URI_PATTERN, min_length=1, max_length=1024),
    BeforeValidator(_check_storage_uri),
]
SecretName = Annotated[
    str,
    StringConstraints(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length=253
    ),
]
CheckName = Annotated[
    str, StringConstraints(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", min_length=1, max_length=63)
]


def _list_map(*keys: str) -> JsonDict:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


_SET: JsonDict = {"x-kubernetes-list-type": "set"}


class ModelSource(ApiModel):
    """Where a version's model comes from and what format it is in."""

    format: ModelFormat = "onnx"
    storage_uri: StorageUri = Field(
        description="s3://, gs://, http(s)://, file://, pvc://<claim>/<path>, or a local path."
    )
    checksum: Annotated[str, StringConstraints(pattern=r"^sha256:[a-f0-9]{64}$")] | None = Field(
        default=None, description="sha256:<hex> of the model file, checked after download."
    )
    credentials_secret: SecretName | None = Field(
        default=None,
        description="Secret in the same namespace with the storage credentials "
        "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_ENDPOINT_URL).",
    )


class Batching(ApiModel):
    """Dynamic batching in the runtime, on by default: it is adaptive, so it costs a lone
    request nothing. A request that finds the model idle runs at once; requests that arrive
    while the model is busy run together as soon as it is free; maxDelay is waited only
    while more requests keep arriving."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.maxQueueSize >= self.maxBatchSize",
                    "maxQueueSize must be at least maxBatchSize",
                )
            ]
        }
    )

    enabled: bool = Field(
        default=True,
        description="On by default: the adaptive batcher runs a request that finds the model "
        "idle at once, never after maxDelay; for a small model (run on the event loop) such a "
        "request is answered as if batching were off, for a larger one it costs tens of "
        "microseconds. false runs every request alone.",
    )
    max_batch_size: int = Field(default=8, ge=1, le=4096)
    max_delay: Duration = Field(
        default="2ms",
        description="The longest the oldest request of a batch waits for more, and only while "
        "more keep arriving; a lone request on an idle model does not wait.",
    )
    max_queue_size: int = Field(default=256, ge=1, le=100_000)
    timeout: Duration = Field(default="5s", description="A request queued longer is rejected.")

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Batching:
        if self.max_queue_size < self.max_batch_size:
            raise ValueError("maxQueueSize must be at least maxBatchSize")
        return self


class Warmup(ApiModel):
    """Synthetic requests run before a version reports ready."""

    enabled: bool = True
    iterations: int = Field(default=3, ge=0, le=1000)


class Quantization(ApiModel):
    """Optional quantization applied when the model is loaded."""

    mode: Literal["none", "dynamicInt8"] = "none"


class ResultCache(ApiModel):
    """An LRU cache of results keyed by model version and input bytes."""

    enabled: bool = False
    max_entries: int = Field(default=1024, ge=1, le=1_000_000)


class EnvVar(ApiModel):
    """A plain environment variable for the runtime container."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]
    value: Annotated[str, StringConstraints(max_length=4096)] = ""


class Tensor(ApiModel):
    """One input or output of a TorchServe model (a ``.mar`` carries no signature)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.shape.all(d, d == -1 || d > 0)",
                    "tensor dimensions must be positive or -1",
                )
            ]
        }
    )

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$", max_length=128)]
    datatype: TensorDatatype
    shape: list[Annotated[int, Field(ge=-1, le=1_000_000_000)]] = Field(
        min_length=1,
        max_length=8,
        description="-1 is any size; -1 first makes the model batchable.",
    )

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in value):
            raise ValueError("tensor dimensions must be positive or -1")
        return value


class TorchServeSettings(ApiModel):
    """How the runtime runs a ``.mar`` in its supervised TorchServe (format torchserve)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.requestFormat != 'raw' || "
                    "(size(self.inputs) == 1 && self.inputs[0].datatype == 'BYTES')",
                    "requestFormat raw must have exactly one BYTES input",
                )
            ]
        }
    )

    inputs: list[Tensor] = Field(min_length=1, max_length=16, json_schema_extra=_list_map("name"))
    outputs: list[Tensor] = Field(min_length=1, max_length=16, json_schema_extra=_list_map("name"))
    request_format: Literal["json", "raw"] = Field(
        default="json",
        description="json: each row as a v2 JSON body; raw: the bytes of one BYTES input.",
    )
    workers: int = Field(default=1, ge=1, le=64, description="TorchServe Python workers.")
    response_timeout: Duration = Field(
        default="60s", description="TorchServe's limit for one request to its handler."
    )

    @field_validator("inputs", "outputs")
    @classmethod
    def _names_unique(cls, value: list[Tensor]) -> list[Tensor]:
        names = [t.name for t in value]
        if len(set(names)) != len(names):
            raise ValueError("tensor names must not repeat")
        return value

    @model_validator(mode="after")
    def _raw_takes_one_bytes_input(self) -> TorchServeSettings:
        if self.request_format == "raw" and (
            len(self.inputs) != 1 or self.inputs[0].datatype != "BYTES"
        ):
            raise ValueError("requestFormat raw must have exactly one BYTES input")
        return self


class RuntimeSettings(ApiModel):
    """How the bundled runtime serves the version."""

    image: ShortText | None = Field(
        default=None, description="Runtime image; the operator's default when unset."
    )
    execution_providers: list[ExecutionProvider] = Field(
        default_factory=lambda: list[ExecutionProvider](["cuda", "cpu"]),
        min_length=1,
        max_length=3,
        json_schema_extra=_SET,
        description="Ordered onnxruntime providers; the runtime falls back along the list.",
    )
    graph_optimization: GraphOptimization = "all"
    intra_op_threads: int = Field(default=0, ge=0, le=256, description="0: the runtime decides.")
    inter_op_threads: int = Field(default=0, ge=0, le=256, description="0: the runtime decides.")
    batching: Batching = Field(default_factory=Batching)
    warmup: Warmup = Field(default_factory=Warmup)
    quantization: Quantization = Field(default_factory=Quantization)
    cache: ResultCache = Field(default_factory=ResultCache)
    env: list[EnvVar] = Field(
        default_factory=list, max_length=32, json_schema_extra=_list_map("name")
    )
    torchserve: TorchServeSettings | None = Field(
        default=None,
        description="Format torchserve: the model's tensors and TorchServe's settings.",
    )

    @field_validator("execution_providers")
    @classmethod
    def _providers_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("executionProviders must not repeat a provider")
        return value

    @field_validator("env")
    @classmethod
    def _env_unique(cls, value: list[EnvVar]) -> list[EnvVar]:
        names = [e.name for e in value]
        if len(set(names)) != len(names):
            raise ValueError("env must not repeat a variable name")
        return value


class Resources(ApiModel):
    """Compute for each pod of the version."""

    cpu: Quantity = "1"
    memory: Quantity = "2Gi"
    gpu: int = Field(default=0, ge=0, le=16, description="nvidia.com/gpu per pod.")


class Toleration(ApiModel):
    """A pod toleration, as in the core API."""

    key: Annotated[str, StringConstraints(max_length=253)] | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=1_000_000_000)


class ScalingMetric(ApiModel):
    """One HPA target: cpu/memory in percent of the request, inflight in requests per pod."""

    type: Literal["cpu", "memory", "inflight"] = Field(
        description=(
            "cpu and memory: the pods' average use in percent of their request, from the "
            "resource metrics API (metrics.k8s.io, served by metrics-server). inflight: the "
            "average per pod of the runtime's modelpilot_inference_pending_requests gauge, "
            "an HPA Pods metric read from the custom metrics API (custom.metrics.k8s.io). "
            "Nothing in a plain cluster serves that API: it needs prometheus-adapter (or "
            "another custom metrics adapter) with a rule that exposes the gauge per pod "
            "from the Prometheus that scrapes the runtime; without one the HPA reports the "
            "metric as unavailable and does not scale on it. KEDA is no substitute here: "
            "it serves external metrics to HPAs it makes itself from ScaledObjects."
        )
    )
    target: int = Field(
        ge=1,
        le=100_000,
        description="Percent of the request for cpu and memory; requests per pod for inflight.",
    )


class Scaling(ApiModel):
    """Replica bounds; an HPA is made when maxReplicas > minReplicas."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.maxReplicas >= self.minReplicas",
                    "maxReplicas must be at least minReplicas",
                )
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    metrics: list[ScalingMetric] = Field(
        default_factory=list, max_length=3, json_schema_extra=_list_map("type")
    )

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must be at least minReplicas")
        types = [m.type for m in self.metrics]
        if len(set(types)) != len(types):
            raise ValueError("scaling.metrics must not repeat a metric type")
        return self


TORCHSERVE_NEEDS_TENSORS = (
    "a torchserve model must declare its tensors in runtime.torchserve (inputs, outputs)"
)
TORCHSERVE_ONLY = "runtime.torchserve must be left out unless model.format is torchserve"


class ModelVersion(ApiModel):
    """A version of the model that may receive traffic."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.model.format != 'torchserve' || self.runtime.quantization.mode == 'none'",
                    "quantization is only available for onnx models",
                ),
                cel(
                    "self.model.format != 'torchserve' || has(self.runtime.torchserve)",
                    TORCHSERVE_NEEDS_TENSORS,
                ),
                cel(
                    "self.model.format == 'torchserve' || !has(self.runtime.torchserve)",
                    TORCHSERVE_ONLY,
                ),
            ]
        }
    )

    name: Name
    model: ModelSource
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    resources: Resources = Field(default_factory=Resources)
    scaling: Scaling = Field(default_factory=Scaling)
    node_selector: dict[str, LabelValue] = Field(default_factory=dict, max_length=32)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _format_settings(self) -> ModelVersion:
        if self.model.format == "torchserve" and self.runtime.quantization.mode != "none":
            raise ValueError("quantization is only available for onnx models")
        if self.model.format == "torchserve" and self.runtime.torchserve is None:
            raise ValueError(TORCHSERVE_NEEDS_TENSORS)
        if self.model.format != "torchserve" and self.runtime.torchserve is not None:
            raise ValueError(TORCHSERVE_ONLY)
        return self


class Step(ApiModel):
    """A canary step: the candidate's share of traffic, held at least for the pause."""

    weight: int = Field(ge=0, le=100)
    pause: Duration | None = Field(
        default=None, description="How long to hold the step; one analysis interval if unset."
    )


class TrafficMatch(ApiModel):
    """An A/B match: requests with this header or cookie value go to the candidate."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.header) != has(self.cookie)",
                    "a match names exactly one of header or cookie",
                ),
                cel(
                    "(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + "
                    "(has(self.regex) ? 1 : 0) == 1",
                    "a match sets exactly one of exact, prefix or regex",
                ),
            ]
        }
    )

    header: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]+$", max_length=256)] | None = (
        None
    )
    cookie: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$", max_length=256)] | None
    ) = None
    exact: Annotated[str, StringConstraints(max_length=1024)] | None = None
    prefix: Annotated[str, StringConstraints(max_length=1024)] | None = None
    regex: Annotated[str, StringConstraints(max_length=1024)] | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> TrafficMatch:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("a match names exactly one of header or cookie")
        if sum(v is not None for v in (self.exact, self.prefix, self.regex)) != 1:
            raise ValueError("a match sets exactly one of exact, prefix or regex")
        return self


_LATENCY = "['latencyP50', 'latencyP99']"


class Check(ApiModel):
    """One analysis check: a built-in comparison with stable, or a custom PromQL template."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.builtin) != has(self.query)",
                    "a check sets exactly one of builtin or query",
                ),
                cel(
                    "!has(self.query) || has(self.min) || has(self.max)",
                    "a query check needs min or max",
                ),
                cel(
                    f"!has(self.maxRatio) || (has(self.builtin) && self.builtin in {_LATENCY})",
                    "maxRatio applies only to the latency built-ins",
                ),
                cel(
                    "!has(self.tolerance) || (has(self.builtin) && self.builtin == 'errorRate')",
                    "tolerance applies only to the errorRate built-in",
                ),
            ]
        }
    )

    name: CheckName
    builtin: BuiltinCheck | None = None
    query: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = Field(
        default=None,
        description="PromQL template (jinja2); variables: namespace, name, version, stable, "
        "candidate, interval. Evaluated for the candidate and compared with min/max.",
    )
    min: float | None = None
    max: float | None = None
    max_ratio: float | None = Field(
        default=None, ge=1.0, le=100.0, description="Candidate/stable ratio allowed (latency)."
    )
    tolerance: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="errorRate: how much higher (absolute, 0.005 = half a point) the "
        "candidate's error rate may be. Set, an interval passes only when the upper confidence "
        "bound of the difference is below it; until then the step waits for evidence.",
    )

    @model_validator(mode="after")
    def _shape(self) -> Check:
        if (self.builtin is None) == (self.query is None):
            raise ValueError("a check sets exactly one of builtin or query")
        if self.query is not None:
            if self.min is None and self.max is None:
                raise ValueError("a query check needs min or max")
            validate_query_template(self.query)
        if self.max_ratio is not None and self.builtin not in ("latencyP50", "latencyP99"):
            raise ValueError("maxRatio applies only to the latency built-ins")
        if self.tolerance is not None and self.builtin != "errorRate":
            raise ValueError("tolerance applies only to the errorRate built-in")
        return self


def _default_checks() -> list[Check]:
    return [
        Check(name="error-rate", builtin="errorRate"),
        Check(name="latency-p99", builtin="latencyP99", max_ratio=1.25),
    ]


class Analysis(ApiModel):
    """How the candidate is judged, interval by interval."""

    interval: Duration = "1m"
    min_samples: int = Field(
        default=100,
        ge=1,
        le=10_000_000,
        description="Fewer requests per version in an interval make it inconclusive.",
    )
    failure_limit: int = Field(
        default=2, ge=0, le=100, description="Failed intervals tolerated; one more rolls back."
    )
    inconclusive_deadline: Duration = Field(
        default="10m", description="Inconclusive this long in a row fails the rollout."
    )
    significance: float = Field(
        default=0.01,
        ge=0.0001,
        le=0.5,
        description="Chance of rolling back a candidate as good as stable, over the whole "
        "rollout (group-sequential error-rate and latency tests).",
    )
    confidence: float = Field(
        default=0.95,
        ge=0.5,
        le=0.9999,
        description="Level of the upper confidence bound that shows a candidate within a "
        "check's tolerance.",
    )
    warmup: Duration | None = Field(
        default=None,
        description="Time after the candidate first gets traffic that no check judges (a cold "
        "process). Unset: one interval; 0s: none.",
    )
    checks: list[Check] = Field(
        default_factory=_default_checks, max_length=16, json_schema_extra=_list_map("name")
    )

    @field_validator("checks")
    @classmethod
    def _unique_names(cls, value: list[Check]) -> list[Check]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError("analysis check names must be unique")
        return value

    @field_validator("interval", "inconclusive_deadline")
    @classmethod
    def _positive(cls, value: str) -> str:
        if parse_duration(value) <= 0:
            raise ValueError("must be longer than 0")
        return value

    def warmup_seconds(self) -> float:
        """The warm-up in seconds (one interval when unset)."""
        return parse_duration(self.warmup if self.warmup is not None else self.interval)


def _default_steps() -> list[Step]:
    return [Step(weight=10), Step(weight=25), Step(weight=50)]


class Rollout(ApiModel):
    """A candidate being tried against the stable version."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.strategy != 'abTest' || size(self.match) > 0",
                    "an abTest rollout needs at least one match",
                ),
                cel(
                    "self.strategy != 'canary' || size(self.steps) > 0",
                    "a canary rollout needs at least one step",
                ),
                cel(
                    "self.steps.map(s, s.weight).isSorted()",
                    "step weights must not decrease",
                ),
            ]
        }
    )

    candidate: Name
    strategy: Strategy = "canary"
    steps: list[Step] = Field(default_factory=_default_steps, max_length=32)
    match: list[TrafficMatch] = Field(default_factory=list, max_length=16)
    mirror_percent: int = Field(default=100, ge=1, le=100, description="shadow: share mirrored.")
    iterations: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="abTest, shadow, blueGreen: passing intervals needed before promotion.",
    )
    analysis: Analysis = Field(default_factory=Analysis)
    promotion: PromotionMode = "auto"

    @model_validator(mode="after")
    def _strategy_needs(self) -> Rollout:
        if self.strategy == "abTest" and not self.match:
            raise ValueError("an abTest rollout needs at least one match")
        if self.strategy == "canary" and not self.steps:
            raise ValueError("a canary rollout needs at least one step")
        weights = [s.weight for s in self.steps]
        if weights != sorted(weights):
            raise ValueError("step weights must not decrease")
        return self


class ParentRef(ApiModel):
    """A Gateway API parent (a Gateway, or a Service for mesh routing)."""

    name: ShortText
    namespace: ShortText | None = None
    kind: Literal["Gateway", "Service"] = "Gateway"
    section_name: ShortText | None = None


class Routing(ApiModel):
    """Which traffic router carries the weights."""

    router: Router = "istio"
    hosts: list[Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=list, max_length=16, json_schema_extra=_SET
    )
    gateways: list[Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=list, max_length=16, json_schema_extra=_SET
    )
    parent_refs: list[ParentRef] = Field(default_factory=list, max_length=16)


class ModelDeploymentSpec(ApiModel):
    """The desired state of a ModelDeployment."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.versions.exists(v, v.name == self.stable)",
                    "spec.stable must name one of spec.versions",
                    ".stable",
                ),
                cel(
                    "!has(self.rollout) || "
                    "self.versions.exists(v, v.name == self.rollout.candidate)",
                    "spec.rollout.candidate must name one of spec.versions",
                    ".rollout.candidate",
                ),
                cel(
                    "!has(self.rollout) || self.rollout.candidate != self.stable",
                    "spec.rollout.candidate must differ from spec.stable",
                    ".rollout.candidate",
                ),
                cel(
                    "!has(self.rollout) || self.routing.router != 'none' || "
                    "self.rollout.strategy == 'blueGreen'",
                    "router none supports only the blueGreen strategy; "
                    "set spec.routing.router to istio or gatewayApi",
                    ".routing.router",
                ),
            ]
        }
    )

    versions: list[ModelVersion] = Field(
        min_length=1, max_length=16, json_schema_extra=_list_map("name")
    )
    stable: Name
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Replicas of the stable version when it is not autoscaled "
        "(written by the scale subresource); scaling.minReplicas when unset.",
    )
    rollout: Rollout | None = None
    routing: Routing = Field(default_factory=Routing)

    @field_validator("versions")
    @classmethod
    def _unique_versions(cls, value: list[ModelVersion]) -> list[ModelVersion]:
        names = [v.name for v in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"version names must be unique; repeated: {', '.join(dup)}")
        return value

    @model_validator(mode="after")
    def _references(self) -> ModelDeploymentSpec:
        names = {v.name for v in self.versions}
        if self.stable not in names:
            raise ValueError("spec.stable must name one of spec.versions")
        if self.rollout is not None:
            if self.rollout.candidate not in names:
                raise ValueError("spec.rollout.candidate must name one of spec.versions")
            if self.rollout.candidate == self.stable:
                raise ValueError("spec.rollout.candidate must differ from spec.stable")
            if self.routing.router == "none" and self.rollout.strategy != "blueGreen":
                raise ValueError(
                    "router none supports only the blueGreen strategy; "
                    "set spec.routing.router to istio or gatewayApi"
                )
        return self

    def version(self, name: str) -> ModelVersion:
        """The version called ``name`` (KeyError if there is none)."""
        for v in self.versions:
            if v.name == name:
                return v
        raise KeyError(name)
