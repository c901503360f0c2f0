"""Verdicts of one interval from recorded Prometheus answers, through the real client."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from modelpilot_operator.analysis import AnalysisOutcome, Target, analyze
from modelpilot_operator.api.v1alpha1 import ModelDeployment, Rollout
from modelpilot_operator.rollout import AnalysisWindow
from tests.fakeprom import DataFn, FakePrometheus, VersionData, histogram

T = Target(namespace="ml", name="fraud", stable="v1", candidate="v2")
END = datetime(2025, 1, 1, 12, 10, tzinfo=UTC)
WINDOW = AnalysisWindow(
    start=END - timedelta(minutes=1), end=END, since=END - timedelta(minutes=5), step=1
)
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]


def rollout(*checks: dict[str, Any], min_samples: int = 100) -> Rollout:
    obj = {
        "metadata": {"name": "fraud"},
        "spec": {
            "versions": [
                {"name": "v1", "model": {"storageUri": "s3://m/1/"}},
                {"name": "v2", "model": {"storageUri": "s3://m/2/"}},
            ],
            "stable": "v1",
            "rollout": {
                "candidate": "v2",
                "analysis": {"minSamples": min_samples, "checks": list(checks)},
            },
        },
    }
    ro = ModelDeployment.model_validate(obj).spec.rollout
    assert ro is not None
    return ro


ERR = {"name": "error-rate", "builtin": "errorRate"}
P99 = {"name": "p99", "builtin": "latencyP99", "maxRatio": 1.2}
DIV = {"name": "agreement", "builtin": "predictionDivergence", "max": 0.05}


def per_window(stable: VersionData, candidate: VersionData, scale_interval: float = 0.2) -> DataFn:
    """Cumulative data over the evidence window; the last interval is a fifth of it."""

    def data(version: str, at: float, seconds: float) -> VersionData:
        d = candidate if version == "v2" else stable
        f = 1.0 if seconds > 60 else scale_interval
        return VersionData(
            codes={k: v * f for k, v in d.codes.items()},
            buckets=[(le, c * f) for le, c in d.buckets],
            classes={k: v * f for k, v in d.classes.items()},
        )

    return data


def run(ro: Rollout, fake: FakePrometheus) -> AnalysisOutcome:
    return analyze(ro, T, WINDOW, fake.source())


def test_a_candidate_like_stable_passes_with_every_number_recorded() -> None:
    same = VersionData(codes={"200": 990, "500": 10})
    fake = FakePrometheus(per_window(VersionData(codes={"200": 4950, "500": 50}), same))
    out = run(rollout(ERR), fake)
    assert out.record.verdict == "pass"
    c = out.record.checks[0]
    assert c.candidate_value == 0.01
    assert c.stable_value == 0.01
    assert c.candidate_samples == 1000
    assert c.stable_samples == 5000
    assert c.p_value is not None
    assert c.p_value > 0.4
    assert "this interval: candidate 2/200" in c.message
    assert out.record.at == "2025-01-01T12:10:00Z"
    assert out.record.window == "1m"
    assert out.record.step == 1


def test_a_candidate_with_more_errors_fails() -> None:
    fake = FakePrometheus(
        per_window(
            VersionData(codes={"200": 4950, "500": 50}), VersionData(codes={"200": 960, "503": 40})
        )
    )
    out = run(rollout(ERR), fake)
    assert out.record.verdict == "fail"
    assert out.record.checks[0].p_value is not None
    assert out.record.checks[0].p_value < 1e-6


def test_error_rate_max_is_a_ceiling() -> None:
    fake = FakePrometheus(
        per_window(
            VersionData(codes={"200": 9000, "500": 1000}),
            VersionData(codes={"200": 900, "500": 100}),
        )
    )
    out = run(rollout({**ERR, "max": 0.05}), fake)
    assert out.record.verdict == "fail"
    assert "above max" in out.record.checks[0].message


def test_too_few_samples_is_inconclusive_not_pass() -> None:
    fake = FakePrometheus(
        per_window(VersionData(codes={"200": 5000}), VersionData(codes={"200": 40, "500": 20}))
    )
    out = run(rollout(ERR, min_samples=100), fake)
    assert out.record.verdict == "inconclusive"
    assert "minSamples 100" in out.record.checks[0].message


def test_no_candidate_traffic_in_the_interval_is_inconclusive() -> None:
    cand = VersionData(codes={"200": 500})
    fake = FakePrometheus(per_window(VersionData(codes={"200": 5000}), cand, scale_interval=0))
    out = run(rollout(ERR), fake)
    assert out.record.verdict == "inconclusive"
    assert "no candidate requests" in out.record.checks[0].message


def test_empty_and_nan_results_are_inconclusive() -> None:
    empty = FakePrometheus(lambda v, at, s: VersionData())
    out = run(rollout(ERR, P99, DIV), empty)
    assert [c.verdict for c in out.record.checks] == ["inconclusive"] * 3
    nan = FakePrometheus(
        lambda v, at, s: VersionData(codes={"200": math.nan, "500": 1.0}, buckets=[(0.1, math.nan)])
    )
    out = run(rollout(ERR, P99), nan)
    assert out.record.verdict == "inconclusive"
    assert all(
        c.candidate_value is None or math.isfinite(c.candidate_value) for c in out.record.checks
    )


def test_prometheus_unreachable_is_inconclusive_and_reported() -> None:
    fake = FakePrometheus(lambda v, at, s: VersionData(), unreachable=True)
    out = run(rollout(ERR, P99), fake)
    assert out.record.verdict == "inconclusive"
    assert out.unavailable is not None
    assert "unreachable" in out.unavailable
    assert all("no metrics" in c.message for c in out.record.checks)


def _lat(counts: list[float]) -> VersionData:
    return VersionData(codes={"200": sum(counts)}, buckets=histogram(BOUNDS, counts))


def test_latency_fails_only_when_slower_beyond_max_ratio_and_significant() -> None:
    stable = _lat([0, 100, 600, 250, 40, 10, 0, 0, 0])
    slower = _lat([0, 10, 100, 300, 400, 180, 10, 0, 0])
    out = run(rollout(P99), FakePrometheus(per_window(stable, slower)))
    c = out.record.checks[0]
    assert out.record.verdict == "fail"
    assert c.candidate_value is not None
    assert c.stable_value is not None
    assert c.candidate_value / c.stable_value > 1.2
    assert c.threshold == 1.2
    # The same histograms with a generous maxRatio pass.
    out = run(rollout({**P99, "maxRatio": 5.0}), FakePrometheus(per_window(stable, slower)))
    assert out.record.verdict == "pass"


def test_latency_ratio_alone_from_a_handful_of_requests_does_not_fail() -> None:
    stable = _lat([0, 1000, 6000, 2500, 400, 100, 0, 0, 0])
    # 2 slow requests out of 150 push the candidate's p99 up, but that is noise.
    cand = _lat([0, 17, 90, 35, 6, 0, 2, 0, 0])
    out = run(rollout(P99, min_samples=100), FakePrometheus(per_window(stable, cand)))
    c = out.record.checks[0]
    assert c.candidate_value is not None
    assert c.stable_value is not None
    assert c.candidate_value / c.stable_value > 1.2
    assert out.record.verdict == "pass"


def test_divergent_predictions_fail_and_similar_ones_pass() -> None:
    stable = VersionData(classes={"fraud": 500, "ok": 9500})
    diverging = VersionData(classes={"fraud": 3000, "ok": 7000})
    out = run(rollout(DIV), FakePrometheus(per_window(stable, diverging)))
    assert out.record.verdict == "fail"
    assert out.record.checks[0].candidate_value is not None
    assert out.record.checks[0].candidate_value > 0.05
    similar = VersionData(classes={"fraud": 52, "ok": 948})
    out = run(rollout(DIV), FakePrometheus(per_window(stable, similar)))
    assert out.record.verdict == "pass"


def test_custom_query_is_rendered_for_each_version_and_bounded() -> None:
    q = 'sum(rate(biz_total{version="{{ version }}",ns="{{ namespace }}"}[{{ interval }}]))'
    fake = FakePrometheus(
        lambda v, at, s: VersionData(),
        custom={
            'sum(rate(biz_total{version="v2",ns="ml"}[1m]))': 0.5,
            'sum(rate(biz_total{version="v1",ns="ml"}[1m]))': 3.0,
        },
    )
    out = run(rollout({"name": "business", "query": q, "min": 1}), fake)
    c = out.record.checks[0]
    assert c.verdict == "fail"
    assert c.candidate_value == 0.5
    assert c.stable_value == 3.0
    fake.custom = {'sum(rate(biz_total{version="v2",ns="ml"}[1m]))': None}
    out = run(rollout({"name": "business", "query": q, "min": 1}), fake)
    assert out.record.checks[0].verdict == "inconclusive"
    assert "returned nothing" in out.record.checks[0].message


def test_one_failing_check_fails_the_interval_and_no_checks_pass() -> None:
    fake = FakePrometheus(
        per_window(
            VersionData(codes={"200": 4950, "500": 50}), VersionData(codes={"200": 960, "503": 40})
        )
    )
    out = run(rollout(ERR, {"name": "business", "query": "vector(1)", "min": 0}), fake)
    assert out.record.verdict == "fail"
    assert run(rollout(), fake).record.verdict == "pass"


def test_the_record_fits_the_status_schema() -> None:
    from modelpilot_operator.api.v1alpha1 import AnalysisRecord

    fake = FakePrometheus(lambda v, at, s: VersionData(codes={"200": 1000.0}))
    out = run(rollout(ERR, P99, DIV), fake)
    again = AnalysisRecord.model_validate(out.record.to_wire())
    assert again == out.record
