"""The statistics behind the built-in checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from modelpilot_operator.analysis import stats
from tests.fakeprom import histogram

BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]


def test_the_conditional_test_is_binomial_one_sided_and_close_to_fisher() -> None:
    worse = stats.rate_increase_test(12, 600, 20, 5400)
    expected = sps.binomtest(12, 32, 0.1, alternative="greater").pvalue
    assert worse.p_value == pytest.approx(expected, rel=1e-9)
    _, fisher = sps.fisher_exact([[12, 588], [20, 5380]], alternative="greater")
    assert worse.p_value >= fisher
    # The one kind of case where it is below Fisher's: a single candidate error decides.
    one = stats.rate_increase_test(1, 34, 37, 43589).p_value
    _, fisher_one = sps.fisher_exact([[1, 33], [37, 43552]], alternative="greater")
    assert one == pytest.approx(fisher_one, rel=1e-3)
    assert worse.statistic > 0
    better = stats.rate_increase_test(0, 600, 60, 5400)
    assert better.p_value == 1.0
    assert better.statistic < 0


def test_rate_test_without_samples_is_nan() -> None:
    assert math.isnan(stats.rate_increase_test(0, 0, 1, 10).p_value)


def test_rate_test_is_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(7)
    ps = []
    for _ in range(2000):
        c = int(rng.binomial(600, 0.01))
        s = int(rng.binomial(5400, 0.01))
        ps.append(stats.rate_increase_test(c, 600, s, 5400).p_value)
    # The exact conditional test is conservative: never more rejections than alpha allows.
    assert np.mean(np.asarray(ps) < 0.05) <= 0.05


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 0.0175), (0.9, 0.05), (0.99, 0.095), (1.0, 0.1)],
)
def test_histogram_quantile_interpolates_like_promql(q: float, expected: float) -> None:
    # 100 observations: 10 <=5ms, 30 <=10ms, 20 <=25ms, 30 <=50ms, 10 <=100ms.
    b = histogram(BOUNDS, [10, 30, 20, 30, 10, 0, 0, 0, 0])
    # rank 50 falls in (0.01, 0.025] holding obs 41..60: 0.01 + 0.015 * 10/20 = 0.0175.
    assert stats.histogram_quantile(q, b) == pytest.approx(expected)


def test_histogram_quantile_edge_cases() -> None:
    assert math.isnan(stats.histogram_quantile(0.99, []))
    assert math.isnan(stats.histogram_quantile(0.99, histogram(BOUNDS, [0] * 9)))
    overflow = histogram(BOUNDS, [0, 0, 0, 0, 0, 0, 0, 0, 5])
    assert stats.histogram_quantile(0.5, overflow) == 1.0  # the largest finite bound
    assert math.isnan(stats.histogram_quantile(0.5, [(0.1, 3.0)]))  # no +Inf bucket


def test_rank_test_sees_a_slower_candidate_and_not_a_faster_one() -> None:
    rng = np.random.default_rng(1)
    base = rng.lognormal(math.log(0.02), 0.5, 1000)
    slow = rng.lognormal(math.log(0.02 * 1.3), 0.5, 300)

    def hist(x: np.ndarray) -> list[tuple[float, float]]:
        counts, _ = np.histogram(x, [0, *BOUNDS, np.inf])
        return histogram(BOUNDS, counts.tolist())

    assert stats.rank_slower_test(hist(slow), hist(base)).p_value < 0.001
    assert stats.rank_slower_test(hist(base), hist(slow)).p_value > 0.99


def test_rank_test_all_in_one_bucket_is_no_evidence() -> None:
    b = histogram(BOUNDS, [0, 0, 50, 0, 0, 0, 0, 0, 0])
    assert stats.rank_slower_test(b, b) == stats.TestResult(0.0, 1.0)


def test_rank_test_matches_scipy_mannwhitneyu_on_binned_data() -> None:
    a = [3, 5, 10, 2, 0, 0, 0, 0, 0]
    b = [10, 20, 15, 5, 1, 0, 0, 0, 0]
    xa = np.repeat(np.arange(9), a)
    xb = np.repeat(np.arange(9), b)
    ref = sps.mannwhitneyu(xa, xb, alternative="greater", use_continuity=False, method="asymptotic")
    got = stats.rank_slower_test(histogram(BOUNDS, a), histogram(BOUNDS, b))
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_jensen_shannon_bounds() -> None:
    same = {"a": 10.0, "b": 30.0}
    assert stats.jensen_shannon(same, {"a": 1.0, "b": 3.0}) == pytest.approx(0.0)
    assert stats.jensen_shannon({"a": 5.0}, {"b": 5.0}) == pytest.approx(1.0)
    assert math.isnan(stats.jensen_shannon({}, same))
    js = stats.jensen_shannon({"a": 60.0, "b": 40.0}, {"a": 50.0, "b": 50.0})
    assert 0 < js < 0.02


def test_psi_and_homogeneity() -> None:
    assert stats.population_stability_index({"a": 1.0, "b": 1.0}, {"a": 5.0, "b": 5.0}) == 0.0
    shifted = stats.homogeneity_test({"a": 700.0, "b": 300.0}, {"a": 500.0, "b": 500.0})
    assert shifted.p_value < 1e-10
    one_class = stats.homogeneity_test({"a": 7.0}, {"a": 9.0})
    assert one_class.p_value == 1.0
