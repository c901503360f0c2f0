"""Group-sequential boundaries: exact where theory gives the answer, and the false-rollback
rate of the whole decision rule (exact conditional p-value against the boundary) within
``significance`` over many looks, on simulated counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from modelpilot_operator.analysis import sequential, stats
from modelpilot_operator.analysis.checks import error_rate_design, planned_information
from modelpilot_operator.analysis.sequential import Design, nominal_level, nominal_levels

from .test_checks import rollout


def test_one_look_without_a_tail_is_the_fixed_sample_test() -> None:
    for alpha in (0.01, 0.05):
        (level,) = nominal_levels(Design(alpha, (1.0,), tail_share=0.0))
        assert level == pytest.approx(alpha, rel=5e-3)
        assert level <= alpha  # the grid's error is made conservative


def test_pocock_like_spending_gives_half_alpha_to_the_first_of_two_equal_looks() -> None:
    levels = nominal_levels(Design(0.01, (1.0, 1.0), rho=1.0, tail_share=0.0))
    assert levels[0] == pytest.approx(0.005, rel=5e-3)
    assert levels[0] <= 0.005
    # The second look's nominal level is above its increment (correlated looks).
    assert 0.005 < levels[1] < 0.01


def test_obrien_fleming_like_spending_keeps_early_looks_strict() -> None:
    levels = nominal_levels(Design(0.01, (1.0,) * 6))
    assert levels[0] < 1e-4 < levels[5]
    assert list(levels[:6]) == sorted(levels[:6])


def test_boundaries_are_cached_per_design_and_scale_free() -> None:
    a = nominal_levels(Design(0.01, (0.09, 0.09, 0.25)))
    b = nominal_levels(Design(0.01, (0.9, 0.9, 2.5)))
    assert a is b
    assert nominal_level(Design(0.01, (1.0,)), 0) == 0.0
    assert nominal_level(Design(0.01, (1.0,)), 10_000) == 0.0


@settings(max_examples=25, deadline=None)
@given(
    alpha=st.sampled_from([0.001, 0.01, 0.05]),
    looks=st.integers(1, 40),
    rho=st.sampled_from([1.0, 2.0, 3.0]),
    extra=st.integers(0, 1000),
)
def test_alpha_spent_never_exceeds_alpha_whatever_the_number_of_looks(
    alpha: float, looks: int, rho: float, extra: int
) -> None:
    d = Design(alpha, (1.0,) * looks, rho=rho)
    spent = [d.spent(k) for k in range(1, looks + extra + 1)]
    assert spent == sorted(spent)
    assert spent[-1] < alpha


@pytest.mark.parametrize(
    "increments",
    [(1.0,) * 6, (0.09, 0.09, 0.1875, 0.1875, 0.25, 0.25), (1.0,) * 200],
    ids=["6 equal looks", "canary 10/25/50", "200-interval abTest"],
)
def test_the_null_crossing_probability_over_all_looks_is_within_alpha(
    increments: tuple[float, ...],
) -> None:
    d = Design(0.01, increments)
    paths = 40_000
    crossed = sequential.crossing_probability(d, d.max_looks + 50, paths, seed=7)
    assert crossed <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / paths)


def _aa_false_rollbacks(
    baseline: float, rps: float, shares: list[float], rollouts: int, seed: int
) -> float:
    """Share of A/A rollouts the exact sequential rule rolls back, one look per minute."""
    rng = np.random.default_rng(seed)
    d = Design(0.01, tuple(w * (1 - w) for w in shares[:6]))
    levels = np.asarray([nominal_level(d, k) for k in range(1, len(shares) + 1)])
    n = rng.poisson(rps * 60, (rollouts, len(shares)))
    nc = rng.binomial(n, np.asarray(shares))
    ns = n - nc
    ec = rng.binomial(nc, baseline)
    es = rng.binomial(ns, baseline)
    ct, st_, cc, sc = (np.cumsum(a, axis=1) for a in (nc, ns, ec, es))
    p = stats.rate_increase_p_values(cc, ct, sc, st_)
    return float((p <= levels).any(axis=1).mean())


@pytest.mark.parametrize("baseline", [0.001, 0.01, 0.05])
@pytest.mark.parametrize("rps", [5.0, 50.0])
def test_aa_false_rollbacks_on_counts_stay_within_significance_over_200_looks(
    baseline: float, rps: float
) -> None:
    # Canary 10/25/50 planned for 6 looks, then held at 50% for 194 more (waiting for
    # evidence, or a long rollout): the total stays within significance.
    shares = [0.1, 0.1, 0.25, 0.25, 0.5, 0.5] + [0.5] * 194
    rollouts = 3000
    rate = _aa_false_rollbacks(baseline, rps, shares, rollouts, seed=11)
    assert rate <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / rollouts)


def test_a_large_regression_is_still_caught() -> None:
    rng = np.random.default_rng(3)
    d = Design(0.01, (0.09, 0.09, 0.1875, 0.1875, 0.25, 0.25))
    shares = np.asarray([0.1, 0.1, 0.25, 0.25, 0.5, 0.5])
    n = rng.poisson(20 * 60, (2000, 6))
    nc = rng.binomial(n, shares)
    cc = np.cumsum(rng.binomial(nc, 0.03), axis=1)
    sc = np.cumsum(rng.binomial(n - nc, 0.01), axis=1)
    p = stats.rate_increase_p_values(cc, np.cumsum(nc, axis=1), sc, np.cumsum(n - nc, axis=1))
    levels = np.asarray([nominal_level(d, k) for k in range(1, 7)])
    assert (p <= levels).any(axis=1).mean() > 0.95


def test_a_rollout_plans_one_look_per_required_passing_interval() -> None:
    ro = rollout({"name": "e", "builtin": "errorRate"})
    # Default steps 10/25/50, one interval each.
    assert planned_information(ro) == pytest.approx((0.09, 0.1875, 0.25))
    d = error_rate_design(ro)
    assert d.alpha == ro.analysis.significance
    assert d.planned_looks == 3


def test_z_boundaries_match_the_levels() -> None:
    d = Design(0.05, (1.0, 1.0, 1.0))
    for z, p in zip(sequential.z_boundaries(d), nominal_levels(d), strict=True):
        assert math.isinf(z) if p == 0 else sps.norm.sf(z) == pytest.approx(p)


def _latency_rollouts(factor: float, looks: int, rollouts: int, seed: int) -> np.ndarray:
    """Cumulative per-bucket latency counts (rollouts x looks x buckets), log-normal."""
    bounds = np.asarray([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0])
    rng = np.random.default_rng(seed)

    def probs(f: float) -> np.ndarray:
        cdf = sps.norm.cdf((np.log(bounds) - math.log(0.03 * f)) / 0.5)
        return np.diff(np.concatenate(([0.0], cdf, [1.0])))

    c = rng.multinomial(rng.poisson(200, (rollouts, looks)), probs(factor))
    s = rng.multinomial(rng.poisson(1800, (rollouts, looks)), probs(1.0))
    return np.stack([np.cumsum(c, axis=1), np.cumsum(s, axis=1)])


def test_bucket_exceedance_tests_hold_their_level_over_many_looks_and_see_a_slower_tail() -> None:
    looks, rollouts = 60, 2000
    d = Design(0.005, (1.0,) * 6)
    levels = np.asarray([nominal_level(d, k) for k in range(1, looks + 1)])
    for factor, check in ((1.0, "null"), (1.2, "slower")):
        c, s = _latency_rollouts(factor, looks, rollouts, seed=5)
        p = stats.exceedance_p_values(
            c.reshape(-1, c.shape[-1]), s.reshape(-1, s.shape[-1]), 0.99
        ).reshape(rollouts, looks, 2)
        rejected = (p <= levels[None, :, None]).any(axis=(1, 2)).mean()
        if check == "null":
            # Two bucket tests at the full level each: within twice the level.
            assert rejected <= 2 * 0.005 + 3 * math.sqrt(0.01 / rollouts)
        else:
            assert rejected > 0.9


def test_bucket_exceedance_uses_the_bounds_around_stables_quantile() -> None:
    # Stable: 100 requests, 99 in the first bucket, 1 in the second: p99 in bucket 0.
    s = np.asarray([99.0, 1.0, 0.0, 0.0])
    # Candidate: much heavier above the first bound.
    c = np.asarray([80.0, 15.0, 5.0, 0.0])
    below, above = stats.exceedance_p_values(c, s, 0.99)[0]
    assert below == 1.0  # no bound below the first bucket
    assert above < 1e-4
    assert stats.exceedance_p_values(s, s, 0.99)[0].min() > 0.4
