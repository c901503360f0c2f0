"""The Prometheus client: query building, auth, timeouts and failures, via MockTransport."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import httpx
import pytest

from modelpilot_operator.adapters import PrometheusClient, PrometheusSource
from modelpilot_operator.analysis import (
    MetricsUnavailableError,
    PrometheusSettings,
    QueryError,
    Target,
)
from modelpilot_operator.analysis.prometheus import (
    classes_query,
    latency_query,
    requests_query,
)
from modelpilot_operator.settings import DEFAULT_PROMETHEUS_URL, Settings
from tests.fakeprom import FakePrometheus, VersionData

T = Target(namespace="ml", name="fraud", stable="v1", candidate="v2")
END = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
S = PrometheusSettings(url="http://prom:9090")


def test_queries_follow_the_metric_contract() -> None:
    assert requests_query(S, T, "v2", 60) == (
        "sum by (code) (increase(modelpilot_inference_requests_total"
        '{namespace="ml",model="fraud",version="v2"}[60s]))'
    )
    assert latency_query(S, T, "v1", 300.4) == (
        "sum by (le) (increase(modelpilot_inference_request_duration_seconds_bucket"
        '{namespace="ml",model="fraud",version="v1"}[300s]))'
    )
    no_ns = PrometheusSettings(url="http://prom:9090", namespace_label="")
    assert classes_query(no_ns, T, "v2", 60) == (
        "sum by (class) (increase(modelpilot_prediction_class_total"
        '{model="fraud",version="v2"}[60s]))'
    )


def test_queries_are_valid_promql() -> None:
    import promql_parser

    for q in (
        requests_query(S, T, "v2", 60),
        latency_query(S, T, "v2", 60),
        classes_query(S, T, "v2", 60),
    ):
        promql_parser.parse(q)


def test_both_versions_are_read_at_the_same_time_over_the_same_range() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        from urllib.parse import parse_qs

        form = parse_qs(request.content.decode())
        seen.append((form["query"][0], form["time"][0]))
        return httpx.Response(
            200, json={"status": "success", "data": {"resultType": "vector", "result": []}}
        )

    src = PrometheusSource(PrometheusClient(S, transport=httpx.MockTransport(handler)))
    src.request_counts(T, "v1", END, 120)
    src.request_counts(T, "v2", END, 120)
    assert {t for _, t in seen} == {f"{END.timestamp():.3f}"}
    assert all("[120s]" in q for q, _ in seen)


def test_errors_are_the_5xx_codes() -> None:
    fake = FakePrometheus(
        lambda v, at, s: VersionData(codes={"200": 90, "404": 5, "503": 3, "500": 2})
    )
    counts = fake.source().request_counts(T, "v2", END, 60)
    assert counts.total == 100
    assert counts.errors == 5


def test_bearer_token_and_basic_auth_are_sent() -> None:
    fake = FakePrometheus(lambda v, at, s: VersionData())
    fake.source(PrometheusSettings(url="http://p", bearer_token="tok")).request_counts(
        T, "v1", END, 60
    )
    assert fake.headers[-1]["authorization"] == "Bearer tok"
    fake.source(PrometheusSettings(url="http://p", username="u", password="p")).request_counts(
        T, "v1", END, 60
    )
    assert fake.headers[-1]["authorization"].startswith("Basic ")


def test_settings_from_the_environment(tmp_path: object) -> None:
    import pathlib

    token = pathlib.Path(str(tmp_path)) / "token"
    token.write_text("secret\n")
    s = Settings.load(
        {
            "MODELPILOT_PROMETHEUS_URL": "https://prom.example:9091",
            "MODELPILOT_PROMETHEUS_TOKEN_FILE": str(token),
            "MODELPILOT_PROMETHEUS_TIMEOUT": "2.5",
            "MODELPILOT_PROMETHEUS_INSECURE_SKIP_VERIFY": "true",
        }
    ).prometheus()
    assert s.url == "https://prom.example:9091"
    assert s.bearer_token == "secret"
    assert s.timeout_s == 2.5
    assert s.verify_tls is False
    # One default, in one place.
    assert Settings.load({}).prometheus().url == DEFAULT_PROMETHEUS_URL


def test_timeout_as_the_chart_writes_it() -> None:
    # The chart and the operator settings write durations ("5s"), not bare seconds.
    assert Settings.load({"MODELPILOT_PROMETHEUS_TIMEOUT": "5s"}).prometheus().timeout_s == 5
    assert Settings.load({"MODELPILOT_PROMETHEUS_TIMEOUT": "500ms"}).prometheus_timeout == 0.5


def test_unreachable_and_overloaded_prometheus_are_unavailable() -> None:
    fake = FakePrometheus(lambda v, at, s: VersionData(), unreachable=True)
    with pytest.raises(MetricsUnavailableError, match="unreachable"):
        fake.source().request_counts(T, "v1", END, 60)
    fake = FakePrometheus(lambda v, at, s: VersionData(), fail_with=503)
    with pytest.raises(MetricsUnavailableError, match="503"):
        fake.source().request_counts(T, "v1", END, 60)


def test_timeouts_are_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    src = PrometheusSource(PrometheusClient(S, transport=httpx.MockTransport(handler)))
    with pytest.raises(MetricsUnavailableError, match="timed out"):
        src.request_counts(T, "v1", END, 60)


def test_a_rejected_query_is_a_query_error() -> None:
    fake = FakePrometheus(lambda v, at, s: VersionData())
    with pytest.raises(QueryError, match="bad_data"):
        fake.source().value("rate(nonsense", END)


def test_custom_values_scalar_empty_nan_and_many_series() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        from urllib.parse import parse_qs

        q = parse_qs(request.content.decode())["query"][0]
        data: dict[str, object] = {
            "scalar": {"resultType": "scalar", "result": [1, "4.5"]},
            "empty": {"resultType": "vector", "result": []},
            "nan": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]},
            "many": {
                "resultType": "vector",
                "result": [
                    {"metric": {"a": "1"}, "value": [1, "1"]},
                    {"metric": {"a": "2"}, "value": [1, "2"]},
                ],
            },
            "matrix": {"resultType": "matrix", "result": []},
        }
        return httpx.Response(200, json={"status": "success", "data": data[q]})

    src = PrometheusSource(PrometheusClient(S, transport=httpx.MockTransport(handler)))
    assert src.value("scalar", END) == 4.5
    assert src.value("empty", END) is None
    assert math.isnan(src.value("nan", END) or 0.0)
    with pytest.raises(QueryError, match="2 series"):
        src.value("many", END)
    with pytest.raises(QueryError, match="matrix"):
        src.value("matrix", END)
