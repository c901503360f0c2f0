"""What the checks read from Prometheus, and the PromQL that reads it (no IO here: the HTTP
client is :mod:`modelpilot_operator.adapters.prometheus`).

Both versions are always queried at the same evaluation time over the same range, so the
candidate and stable are compared on the same window. Transport failures, timeouts and
5xx answers raise :class:`MetricsUnavailableError` (the interval is inconclusive, never a
rollback); a query Prometheus rejects raises :class:`QueryError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

REQUESTS = "modelpilot_inference_requests_total"
DURATION_BUCKETS = "modelpilot_inference_request_duration_seconds_bucket"
PREDICTION_CLASSES = "modelpilot_prediction_class_total"


class MetricsUnavailableError(Exception):
    """Prometheus could not be reached or did not answer in time."""


class QueryError(Exception):
    """Prometheus answered, but rejected the query or returned something unusable."""


@dataclass(frozen=True)
class PrometheusSettings:
    """Where Prometheus is and how to talk to it (from the operator's :class:`Settings`)."""

    url: str
    bearer_token: str | None = None
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0
    verify_tls: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    # Label Prometheus puts the pod's namespace in (Kubernetes service discovery); "" for none.
    namespace_label: str = "namespace"
    # HTTP-equivalent status codes that count as errors (the runtime maps gRPC codes). 429 and
    # 503 are the runtime's rejections (queue full, overloaded): a failure of the candidate.
    error_code_regex: str = "5..|429"


@dataclass(frozen=True)
class Target:
    """The ModelDeployment whose versions are compared."""

    namespace: str
    name: str
    stable: str
    candidate: str


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class RequestCounts:
    """Requests and errors of one version over a window."""

    total: float
    errors: float


class MetricSource(Protocol):
    """What the checks read. :class:`PrometheusSource` is the real one; the benchmark's
    simulator is another."""

    def request_counts(
        self, target: Target, version: str, end: datetime, seconds: float
    ) -> RequestCounts: ...

    def latency_buckets(
        self, target: Target, version: str, end: datetime, seconds: float
    ) -> list[tuple[float, float]]: ...

    def class_counts(
        self, target: Target, version: str, end: datetime, seconds: float
    ) -> dict[str, float]: ...

    def value(self, query: str, end: datetime) -> float | None: ...


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def selector(settings: PrometheusSettings, target: Target, version: str) -> str:
    """The label matchers for one version of the target."""
    parts = []
    if settings.namespace_label:
        parts.append(f'{settings.namespace_label}="{_label_value(target.namespace)}"')
    parts.append(f'model="{_label_value(target.name)}"')
    parts.append(f'version="{_label_value(version)}"')
    return ",".join(parts)


def range_of(seconds: float) -> str:
    """A PromQL range in whole seconds (at least one)."""
    return f"{max(1, round(seconds))}s"


def requests_query(settings: PrometheusSettings, target: Target, version: str, s: float) -> str:
    """Requests of one version over the range, by status code."""
    sel = selector(settings, target, version)
    return f"sum by (code) (increase({REQUESTS}{{{sel}}}[{range_of(s)}]))"


def latency_query(settings: PrometheusSettings, target: Target, version: str, s: float) -> str:
    """The request duration histogram of one version over the range, by bucket."""
    sel = selector(settings, target, version)
    return f"sum by (le) (increase({DURATION_BUCKETS}{{{sel}}}[{range_of(s)}]))"


def classes_query(settings: PrometheusSettings, target: Target, version: str, s: float) -> str:
    """Predicted classes of one version over the range."""
    sel = selector(settings, target, version)
    return f"sum by (class) (increase({PREDICTION_CLASSES}{{{sel}}}[{range_of(s)}]))"
