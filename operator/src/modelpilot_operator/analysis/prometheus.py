"""Reading the runtime's metrics from Prometheus over its HTTP API (``/api/v1/query``).

Both versions are always queried at the same evaluation time over the same range, so the
candidate and stable are compared on the same window. Transport failures, timeouts and
5xx answers raise :class:`MetricsUnavailableError` (the interval is inconclusive, never a
rollback); a query Prometheus rejects raises :class:`QueryError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from ..api.v1alpha1 import parse_duration

REQUESTS = "modelpilot_inference_requests_total"
DURATION_BUCKETS = "modelpilot_inference_request_duration_seconds_bucket"
PREDICTION_CLASSES = "modelpilot_prediction_class_total"


class MetricsUnavailableError(Exception):
    """Prometheus could not be reached or did not answer in time."""


class QueryError(Exception):
    """Prometheus answered, but rejected the query or returned something unusable."""


@dataclass(frozen=True)
class PrometheusSettings:
    """Where Prometheus is and how to talk to it (operator settings)."""

    url: str = "http://prometheus.monitoring.svc:9090"
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

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PrometheusSettings:
        """Settings from ``MODELPILOT_PROMETHEUS_*`` variables (the operator's environment)."""

        def get(key: str) -> str | None:
            return env.get("MODELPILOT_PROMETHEUS_" + key) or None

        token = get("TOKEN")
        token_file = get("TOKEN_FILE")
        if token is None and token_file is not None:
            token = Path(token_file).read_text().strip()
        return cls(
            url=get("URL") or cls.url,
            bearer_token=token,
            username=get("USERNAME"),
            password=get("PASSWORD"),
            timeout_s=_seconds(get("TIMEOUT"), cls.timeout_s),
            verify_tls=(get("INSECURE_SKIP_VERIFY") or "false").lower() not in ("1", "true"),
            namespace_label=env.get("MODELPILOT_PROMETHEUS_NAMESPACE_LABEL", cls.namespace_label),
        )


def _seconds(value: str | None, default: float) -> float:
    """A timeout given as plain seconds (``5``) or as a duration (``5s``, ``500ms``)."""
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        return parse_duration(value)


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


class PrometheusClient:
    """A small synchronous client for instant queries; the transport can be injected."""

    def __init__(
        self, settings: PrometheusSettings, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.settings = settings
        headers = dict(settings.headers)
        if settings.bearer_token:
            headers["Authorization"] = f"Bearer {settings.bearer_token}"
        auth = (
            httpx.BasicAuth(settings.username, settings.password or "")
            if settings.username
            else None
        )
        self._http = httpx.Client(
            base_url=settings.url.rstrip("/"),
            headers=headers,
            auth=auth,
            timeout=settings.timeout_s,
            verify=settings.verify_tls,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def query(self, promql: str, at: datetime) -> list[Sample]:
        """Evaluate an instant query at ``at``; scalars come back as one sample."""
        try:
            resp = self._http.post(
                "/api/v1/query", data={"query": promql, "time": f"{at.timestamp():.3f}"}
            )
        except httpx.TimeoutException as exc:
            raise MetricsUnavailableError(
                f"prometheus at {self.settings.url} timed out: {exc}"
            ) from exc
        except httpx.TransportError as exc:
            raise MetricsUnavailableError(
                f"prometheus at {self.settings.url} unreachable: {exc}"
            ) from exc
        if resp.status_code >= 500 or resp.status_code in (401, 403, 429):
            raise MetricsUnavailableError(
                f"prometheus at {self.settings.url} answered {resp.status_code}: {resp.text[:200]}"
            )
        try:
            body: dict[str, Any] = resp.json()
        except ValueError as exc:
            raise QueryError(f"prometheus answered {resp.status_code} without JSON") from exc
        if body.get("status") != "success":
            raise QueryError(
                f"prometheus rejected the query ({body.get('errorType', resp.status_code)}): "
                f"{body.get('error', '')}"
            )
        return _samples(body.get("data") or {})


def _samples(data: Mapping[str, Any]) -> list[Sample]:
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return [Sample({}, _float(result[1]))]
    if kind == "vector" and isinstance(result, list):
        return [
            Sample(dict(item.get("metric") or {}), _float((item.get("value") or [0, "NaN"])[1]))
            for item in result
        ]
    raise QueryError(f"expected an instant vector or scalar, got {kind!r}")


def _float(text: object) -> float:
    try:
        return float(str(text))
    except ValueError:
        return math.nan


class PrometheusSource:
    """:class:`MetricSource` over a :class:`PrometheusClient`."""

    def __init__(self, client: PrometheusClient) -> None:
        self.client = client
        self.settings = client.settings
        self._errors = re.compile(self.settings.error_code_regex)

    def request_counts(
        self, target: Target, version: str, end: datetime, seconds: float
    ) -> RequestCounts:
        """Requests and errors (codes matching ``error_code_regex``)."""
        rows = self.client.query(requests_query(self.settings, target, version, seconds), end)
        total = errors = 0.0
        for row in rows:
            if math.isnan(row.value):
                continue
            total += row.value
            if self._errors.fullmatch(row.labels.get("code", "")):
                errors += row.value
        return RequestCounts(total, errors)

    def latency_buckets(
        self, target: Target, version: str, end: datetime, seconds: float
    ) -> list[tuple[float, float]]:
        """Cumulative (le, count) pairs of the request duration histogram."""
        rows = self.client.query(latency_query(self.settings, target, version, seconds), end)
        out = []
        for row in rows:
            le = row.labels.get("le")
            if le is None or math.isnan(row.value):
                continue
            out.append((float(le), row.value))
        return sorted(out)

    def class_counts(
        self, target: Target, version: str, end: datetime, seconds: float
    ) -> dict[str, float]:
        """Predictions per class."""
        rows = self.client.query(classes_query(self.settings, target, version, seconds), end)
        return {row.labels.get("class", ""): row.value for row in rows if not math.isnan(row.value)}

    def value(self, query: str, end: datetime) -> float | None:
        """The single value of a custom query; None when it returns nothing."""
        rows = self.client.query(query, end)
        if not rows:
            return None
        if len(rows) > 1:
            raise QueryError(f"the query returned {len(rows)} series; a check needs one value")
        return rows[0].value
