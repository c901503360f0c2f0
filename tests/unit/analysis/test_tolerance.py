"""Non-inferiority: an errorRate check with a tolerance passes only on evidence."""

from __future__ import annotations

import re

import pytest

from modelpilot_operator.analysis import stats
from tests.fakeprom import FakePrometheus, VersionData

from .test_checks import ERR, per_window, rollout, run

TOL = {**ERR, "tolerance": 0.005}


def test_enough_evidence_of_a_similar_rate_passes_within_the_tolerance() -> None:
    fake = FakePrometheus(
        per_window(
            VersionData(codes={"200": 49500, "500": 500}),
            VersionData(codes={"200": 9900, "500": 100}),
        )
    )
    out = run(rollout(TOL), fake)
    c = out.record.checks[0]
    assert c.verdict == "pass", c.message
    assert "within tolerance" in c.message
    assert c.needed_samples == 0
    assert c.planned_samples is not None
    assert 0 < c.planned_samples < 10_000


def test_too_little_evidence_waits_and_says_how_much_more_is_needed() -> None:
    fake = FakePrometheus(
        per_window(
            VersionData(codes={"200": 4950, "500": 50}), VersionData(codes={"200": 990, "500": 10})
        )
    )
    out = run(rollout(TOL), fake)
    c = out.record.checks[0]
    assert out.record.verdict == "inconclusive"
    m = re.match(
        r"waiting for evidence: (\d+) more candidate requests needed at this rate", c.message
    )
    assert m is not None, c.message
    assert c.needed_samples == int(m.group(1)) > 0
    # The same check without a tolerance passes on the same numbers (absence of evidence).
    assert run(rollout(ERR), fake).record.verdict == "pass"
    # With that many more requests at the same rates, the bound falls below the tolerance,
    # and not with a tenth fewer.
    for share, below in ((1.0, True), (0.9, False)):
        n_c = 1000 + share * c.needed_samples
        n_s = 5 * n_c
        bound = stats.difference_upper_bounds(n_c / 100, n_c, n_s / 100, n_s, 0.95)
        assert bool(bound < 0.005 * 1.0001) == below


def test_no_errors_at_all_still_needs_evidence() -> None:
    # Zero errors: the bound is about 3/n (the rule of three), not 0; the planned and the
    # needed sample sizes say so rather than "almost none".
    fake = FakePrometheus(
        per_window(VersionData(codes={"200": 5000}), VersionData(codes={"200": 300}))
    )
    c = run(rollout(TOL), fake).record.checks[0]
    assert c.verdict == "inconclusive"
    assert c.needed_samples is not None
    assert 100 < c.needed_samples < 1000
    assert c.planned_samples is not None
    assert c.planned_samples > 300


def test_a_rate_above_the_tolerance_never_passes_and_a_significant_one_fails() -> None:
    fake = FakePrometheus(
        per_window(
            VersionData(codes={"200": 49500, "500": 500}),
            VersionData(codes={"200": 980, "500": 20}),
        )
    )
    c = run(rollout(TOL), fake).record.checks[0]
    assert c.verdict == "inconclusive"
    assert c.needed_samples is None
    assert "will not show the candidate within the tolerance" in c.message
    bad = FakePrometheus(
        per_window(
            VersionData(codes={"200": 49500, "500": 500}),
            VersionData(codes={"200": 9600, "500": 400}),
        )
    )
    assert run(rollout(TOL), bad).record.verdict == "fail"


def test_rejections_429_and_503_count_as_failures() -> None:
    fake = FakePrometheus(
        per_window(
            VersionData(codes={"200": 4950, "500": 50}),
            VersionData(codes={"200": 940, "429": 40, "503": 20}),
        )
    )
    c = run(rollout(ERR), fake).record.checks[0]
    assert c.candidate_value == pytest.approx(0.06)
    assert c.verdict == "fail"


@pytest.mark.parametrize(("events", "total"), [(0, 10), (3, 100), (50, 1000), (0, 1)])
def test_wilson_interval_contains_the_estimate(events: int, total: int) -> None:
    lo, hi = stats.wilson_interval(events, total, 0.95)
    assert 0.0 <= lo <= events / total <= hi <= 1.0


def test_upper_bound_shrinks_with_evidence() -> None:
    small = stats.difference_upper_bound(10, 1000, 50, 5000, 0.95)
    large = stats.difference_upper_bound(100, 10000, 500, 50000, 0.95)
    assert 0 < large < small
    assert stats.difference_upper_bound(0, 0, 1, 10, 0.95) == float("inf")
