"""ModelDeployment status: everything the operator decided, and why.

The rollout's whole state lives here (no memory in the operator), so an operator restarted
at any moment continues from status and the weights it reads back from the route.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .common import ApiModel, Duration, Message, Name, ShortText

Phase = Literal[
    "Pending",
    "Stable",
    "Progressing",
    "Paused",
    "AwaitingPromotion",
    "Promoting",
    "Promoted",
    "RolledBack",
    "Failed",
]
Verdict = Literal["pass", "fail", "inconclusive"]
ConditionStatus = Literal["True", "False", "Unknown"]
ConditionType = Literal["Ready", "Progressing", "Promoted", "RolledBack", "Degraded"]
Action = Literal["promote", "abort", "retry", "pause", "resume", "rollback"]
Timestamp = Annotated[str, StringConstraints(max_length=64)]


class Condition(ApiModel):
    """A condition in the usual Kubernetes shape (kubectl wait reads these)."""

    type: ConditionType
    status: ConditionStatus
    reason: Annotated[str, StringConstraints(max_length=128)] = ""
    message: Message = ""
    last_transition_time: Timestamp | None = None
    observed_generation: int | None = None


class CheckResult(ApiModel):
    """One check in one interval: both versions' values, the test and its verdict."""

    name: ShortText
    verdict: Verdict
    stable_value: float | None = None
    candidate_value: float | None = None
    stable_samples: int | None = None
    candidate_samples: int | None = None
    statistic: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    planned_samples: int | None = Field(
        default=None,
        description="Candidate requests a tolerance check plans to need to show a candidate "
        "as good as stable within its tolerance (pooled error rate, observed traffic shares).",
    )
    needed_samples: int | None = Field(
        default=None,
        description="More candidate requests needed, at the observed rates, before the check "
        "can pass (waiting for evidence).",
    )
    message: Message = ""


class AnalysisRecord(ApiModel):
    """The outcome of one analysis interval."""

    at: Timestamp
    step: int | None = None
    window: Duration
    verdict: Verdict
    checks: list[CheckResult] = Field(default_factory=list, max_length=16)


class VersionStatus(ApiModel):
    """What the cluster runs for one version."""

    name: Name
    desired_replicas: int = 0
    ready_replicas: int = 0
    ready: bool = False
    provider: ShortText | None = Field(
        default=None, description="Execution provider the pods report, e.g. CUDAExecutionProvider."
    )
    message: Message = ""


class Request(ApiModel):
    """A person's decision, written through the status subresource by `modelpilot`."""

    action: Action
    revision: ShortText | None = Field(
        default=None, description="Candidate revision the decision is about (promote needs it)."
    )
    full: bool = Field(default=False, description="promote: skip the remaining steps.")
    id: ShortText = Field(description="Unique per request; the operator acts once on each id.")
    requested_at: Timestamp
    requested_by: ShortText = ""


class ModelDeploymentStatus(ApiModel):
    """The observed state of a ModelDeployment."""

    observed_generation: int | None = None
    phase: Phase = "Pending"
    message: Message = ""
    stable: Name | None = None
    candidate: Name | None = None
    candidate_revision: ShortText | None = None
    candidate_weight: int = Field(default=0, ge=0, le=100)
    weights: dict[str, Annotated[int, Field(ge=0, le=100)]] = Field(
        default_factory=dict, description="As read back from the route, not as intended."
    )
    desired_weights: dict[str, Annotated[int, Field(ge=0, le=100)]] = Field(default_factory=dict)
    mirror_percent: int = Field(default=0, ge=0, le=100)
    step: int | None = None
    step_started_at: Timestamp | None = None
    rollout_started_at: Timestamp | None = Field(
        default=None,
        description="Start of the evidence the checks judge: when the rollout started, moved "
        "to the end of the warm-up (analysis.warmup) once that is over.",
    )
    last_analysis_at: Timestamp | None = None
    passed_intervals: int = 0
    failed_intervals: int = 0
    inconclusive_since: Timestamp | None = None
    paused: bool = False
    analysis: list[AnalysisRecord] = Field(default_factory=list, max_length=20)
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    versions: list[VersionStatus] = Field(default_factory=list, max_length=16)
    request: Request | None = None
    handled_request: ShortText | None = Field(
        default=None, description="Id of the last request the operator acted on."
    )
    replicas: int = Field(default=0, description="Ready replicas of the stable version (scale).")
    selector: ShortText | None = Field(default=None, description="Stable pods' label selector.")
