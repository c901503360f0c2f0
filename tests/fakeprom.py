"""A stand-in for Prometheus's instant query API, served through ``httpx.MockTransport``.

It answers the analysis package's queries (requests by code, request duration buckets by
``le``, predicted classes) from counts a test or the simulator supplies per version and
window, so the real client, query building and parsing are exercised. Custom queries are
answered from a table. It records every query it was asked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import httpx

from modelpilot_operator.adapters import PrometheusClient, PrometheusSource
from modelpilot_operator.analysis import PrometheusSettings


@dataclass
class VersionData:
    """What one version did over a window."""

    codes: dict[str, float] = field(default_factory=dict)  # requests by status code
    buckets: list[tuple[float, float]] = field(default_factory=list)  # cumulative (le, count)
    classes: dict[str, float] = field(default_factory=dict)


# (version, window end as unix seconds, window length in seconds) -> data
DataFn = Callable[[str, float, float], VersionData]

_VERSION = re.compile(r'version="([^"]*)"')
_RANGE = re.compile(r"\[(\d+)s\]")


@dataclass
class FakePrometheus:
    data: DataFn
    custom: Mapping[str, float | None] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    headers: list[Mapping[str, str]] = field(default_factory=list)
    fail_with: int | None = None  # answer every request with this status code
    unreachable: bool = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.unreachable:
            raise httpx.ConnectError("connection refused", request=request)
        self.headers.append(dict(request.headers))
        if self.fail_with is not None:
            return httpx.Response(self.fail_with, text="overloaded")
        form = parse_qs(request.content.decode())
        query = form["query"][0]
        at = float(form["time"][0])
        self.queries.append(query)
        if query in self.custom:
            value = self.custom[query]
            result = [] if value is None else [{"metric": {}, "value": [at, _fmt(value)]}]
            return _ok("vector", result)
        version = _VERSION.search(query)
        span = _RANGE.search(query)
        if not version or not span:
            return httpx.Response(
                400,
                json={"status": "error", "errorType": "bad_data", "error": "unknown query"},
            )
        d = self.data(version.group(1), at, float(span.group(1)))
        if "modelpilot_inference_requests_total" in query:
            rows = [{"metric": {"code": k}, "value": [at, _fmt(v)]} for k, v in d.codes.items()]
        elif "modelpilot_inference_request_duration_seconds_bucket" in query:
            rows = [{"metric": {"le": _le(le)}, "value": [at, _fmt(v)]} for le, v in d.buckets]
        elif "modelpilot_prediction_class_total" in query:
            rows = [{"metric": {"class": k}, "value": [at, _fmt(v)]} for k, v in d.classes.items()]
        else:
            return httpx.Response(400, json={"status": "error", "error": "unknown metric"})
        return _ok("vector", rows)

    def source(self, settings: PrometheusSettings | None = None) -> PrometheusSource:
        client = PrometheusClient(
            settings or PrometheusSettings(url="http://prometheus.test:9090"),
            transport=httpx.MockTransport(self.handler),
        )
        return PrometheusSource(client)


def _ok(kind: str, result: object) -> httpx.Response:
    body = {"status": "success", "data": {"resultType": kind, "result": result}}
    return httpx.Response(200, content=json.dumps(body).encode())


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _le(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(float(le))


def histogram(bounds: Sequence[float], counts: Sequence[float]) -> list[tuple[float, float]]:
    """Cumulative buckets (with +Inf) from per-bucket counts; ``counts`` has one more entry
    than ``bounds`` (the overflow)."""
    out = []
    total = 0.0
    for le, c in zip([*bounds, math.inf], counts, strict=True):
        total += c
        out.append((le, total))
    return out
