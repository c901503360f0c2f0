"""The Prometheus HTTP API (``/api/v1/query``) behind the analysis's :class:`MetricSource`.

Transport failures, timeouts and 5xx answers raise :class:`MetricsUnavailableError` (the
interval is inconclusive, never a rollback); a query Prometheus rejects raises
:class:`QueryError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx

from ..analysis.prometheus import (
    MetricsUnavailableError,
    PrometheusSettings,
    QueryError,
    RequestCounts,
    Sample,
    Target,
    classes_query,
    latency_query,
    requests_query,
)


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
