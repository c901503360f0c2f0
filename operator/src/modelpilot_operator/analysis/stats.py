"""The statistics behind the built-in checks, on plain numbers (no I/O).

Every test is one-sided: a rollout is stopped when the candidate is *worse* than stable;
being better is never a failure. Counts from Prometheus ``increase()`` are extrapolated
floats; they are rounded to whole requests before a test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scipy import stats
else:
    from ._lazy import scipy_stats as stats

Buckets = Sequence[tuple[float, float]]  # (upper bound "le", cumulative count), any order


@dataclass(frozen=True)
class TestResult:
    """A test statistic and its one-sided p-value (small: the candidate is worse)."""

    statistic: float
    p_value: float


def two_proportion_z(c_events: int, c_total: int, s_events: int, s_total: int) -> float:
    """Pooled two-proportion z statistic, positive when the candidate's rate is higher."""
    if c_total <= 0 or s_total <= 0:
        return math.nan
    pooled = (c_events + s_events) / (c_total + s_total)
    se = math.sqrt(pooled * (1 - pooled) * (1 / c_total + 1 / s_total))
    if se == 0:
        return 0.0
    return (c_events / c_total - s_events / s_total) / se


def rate_increase_test(c_events: int, c_total: int, s_events: int, s_total: int) -> TestResult:
    """Is the candidate's event rate (errors, slow requests) higher than stable's?

    The exact conditional test of two Poisson rates (Przyborowski and Wilenski 1940): given
    ``m`` events in all, the candidate's share of them is Binomial(m, n_c / (n_c + n_s)) when
    both rates are equal. Exact at the small counts a canary sees (a handful of errors per
    interval), where the normal approximation of the z-test is poor. For binomial counts it
    is as conservative as Fisher's exact test for practical purposes: the hypergeometric is
    the narrower distribution, so in the upper tail its p-values are larger, or smaller by a
    few parts in ten thousand when a single candidate error decides. It needs only the
    event counts and the traffic shares, and it is fast on
    arrays (:func:`rate_increase_p_values`), so the benchmark runs the same test. The z
    statistic is reported alongside because it is the familiar number.
    """
    z = two_proportion_z(c_events, c_total, s_events, s_total)
    if c_total <= 0 or s_total <= 0:
        return TestResult(z, math.nan)
    p = float(rate_increase_p_values(c_events, c_total, s_events, s_total))
    return TestResult(z, p)


def rate_increase_p_values(
    c_events: np.ndarray | float,
    c_total: np.ndarray | float,
    s_events: np.ndarray | float,
    s_total: np.ndarray | float,
) -> np.ndarray:
    """The one-sided p-values of :func:`rate_increase_test`, element-wise.

    Arrays in, arrays out: the benchmark judges thousands of simulated rollouts with the
    same code as the operator.
    """
    ce, ct = np.asarray(c_events, dtype=float), np.asarray(c_total, dtype=float)
    se, st = np.asarray(s_events, dtype=float), np.asarray(s_total, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = ct / (ct + st)
        p = stats.binom.sf(ce - 1, ce + se, share)
    return np.asarray(np.clip(np.where(ce <= 0, 1.0, p), 0.0, 1.0))


def _sorted_buckets(buckets: Buckets) -> list[tuple[float, float]]:
    return sorted(((float(le), float(c)) for le, c in buckets), key=lambda b: b[0])


def histogram_count(buckets: Buckets) -> float:
    """Observations in a cumulative histogram (the +Inf bucket)."""
    b = _sorted_buckets(buckets)
    return b[-1][1] if b else 0.0


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """The q-quantile of a cumulative histogram, as PromQL's ``histogram_quantile`` computes it.

    Linear interpolation inside the bucket holding the rank; a rank in the +Inf bucket gives
    the largest finite bound. NaN when the histogram is empty or has no +Inf bucket.
    """
    b = _sorted_buckets(buckets)
    if len(b) < 2 or not math.isinf(b[-1][0]) or b[-1][1] <= 0 or not 0 <= q <= 1:
        return math.nan
    # Counts from increase() can dip by rounding; make them monotonic as Prometheus does.
    mono: list[tuple[float, float]] = []
    top = 0.0
    for le, c in b:
        top = max(top, c)
        mono.append((le, top))
    rank = q * mono[-1][1]
    for i, (le, c) in enumerate(mono):
        if c >= rank:
            if math.isinf(le):
                return mono[-2][0]
            lower, below = (0.0, 0.0) if i == 0 else mono[i - 1]
            if i == 0 and le <= 0:
                return le
            inside = c - below
            if inside <= 0:
                return le
            return lower + (le - lower) * (rank - below) / inside
    return mono[-2][0]


def bucket_counts(buckets: Buckets, bounds: Sequence[float]) -> np.ndarray:
    """Observations per bucket (not cumulative) on the given upper bounds, rounded."""
    cumulative = dict(_sorted_buckets(buckets))
    values = [cumulative.get(le, math.nan) for le in bounds]
    out: list[float] = []
    prev = 0.0
    for v in values:
        v = prev if math.isnan(v) else max(v, prev)
        out.append(v - prev)
        prev = v
    return np.asarray(np.rint(np.asarray(out, dtype=float)), dtype=float)


def rank_slower_test(c_buckets: Buckets, s_buckets: Buckets) -> TestResult:
    """Are the candidate's latencies stochastically larger than stable's?

    A one-sided Mann-Whitney U test on the binned observations: every request is a sample,
    known only up to its bucket, so observations in the same bucket are ties and get the
    usual tie-corrected variance. The statistic is the normal z of U.
    """
    bounds = sorted({float(le) for le, _ in c_buckets} | {float(le) for le, _ in s_buckets})
    a = bucket_counts(c_buckets, bounds)
    b = bucket_counts(s_buckets, bounds)
    n1, n2 = float(a.sum()), float(b.sum())
    if n1 <= 0 or n2 <= 0:
        return TestResult(math.nan, math.nan)
    below = np.concatenate(([0.0], np.cumsum(b)[:-1]))
    u = float(np.sum(a * (below + 0.5 * b)))
    n = n1 + n2
    ties = a + b
    tie_term = float(np.sum(ties**3 - ties)) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0:
        return TestResult(0.0, 1.0)
    z = (u - n1 * n2 / 2.0) / math.sqrt(var)
    return TestResult(z, float(stats.norm.sf(z)))


def _aligned(c: Mapping[str, float], s: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(c) | set(s))
    a = np.asarray([max(0.0, float(c.get(k, 0.0))) for k in keys])
    b = np.asarray([max(0.0, float(s.get(k, 0.0))) for k in keys])
    return a, b


def jensen_shannon(c_counts: Mapping[str, float], s_counts: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence (bits, 0..1) between two class distributions given as counts."""
    a, b = _aligned(c_counts, s_counts)
    if a.sum() <= 0 or b.sum() <= 0:
        return math.nan
    p, q = a / a.sum(), b / b.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def population_stability_index(
    c_counts: Mapping[str, float], s_counts: Mapping[str, float], floor: float = 1e-4
) -> float:
    """PSI of the candidate's class distribution against stable's (shares floored at ``floor``)."""
    a, b = _aligned(c_counts, s_counts)
    if a.sum() <= 0 or b.sum() <= 0:
        return math.nan
    p = np.maximum(a / a.sum(), floor)
    q = np.maximum(b / b.sum(), floor)
    return float(np.sum((p - q) * np.log(p / q)))


def homogeneity_test(c_counts: Mapping[str, float], s_counts: Mapping[str, float]) -> TestResult:
    """G-test that both versions draw classes from the same distribution.

    The G statistic is the sample-size-weighted KL form of the Jensen-Shannon divergence, so it
    tells whether an observed divergence is more than sampling noise.
    """
    a, b = _aligned(c_counts, s_counts)
    a, b = np.rint(a), np.rint(b)
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    if a.sum() <= 0 or b.sum() <= 0:
        return TestResult(math.nan, math.nan)
    if len(a) < 2:
        return TestResult(0.0, 1.0)
    g, p, _, _ = stats.chi2_contingency(
        np.vstack([a, b]), lambda_="log-likelihood", correction=False
    )
    return TestResult(float(g), float(p))


def wilson_interval(events: int, total: int, confidence: float) -> tuple[float, float]:
    """Two-sided Wilson score interval for a proportion (each side at ``(1 - confidence)``).

    Good coverage at the small counts of a canary, unlike the Wald interval, and never
    outside [0, 1] (Wilson 1927; Newcombe 1998).
    """
    if total <= 0:
        return (0.0, 1.0)
    z = float(stats.norm.isf(1 - confidence))
    p = events / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_upper_bound(
    c_events: int, c_total: int, s_events: int, s_total: int, confidence: float
) -> float:
    """One-sided upper confidence bound of (candidate rate - stable rate).

    Newcombe's hybrid score method (1998, method 10): the two Wilson intervals combined,
    ``d + sqrt((u_c - p_c)^2 + (p_s - l_s)^2)``; well behaved at zero events.
    """
    if c_total <= 0 or s_total <= 0:
        return math.inf
    return float(difference_upper_bounds(c_events, c_total, s_events, s_total, confidence))


def difference_upper_bounds(
    c_events: np.ndarray | float,
    c_total: np.ndarray | float,
    s_events: np.ndarray | float,
    s_total: np.ndarray | float,
    confidence: float,
) -> np.ndarray:
    """:func:`difference_upper_bound` element-wise (``inf`` where a total is 0)."""
    z = float(stats.norm.isf(1 - confidence))
    ce, ct = np.asarray(c_events, dtype=float), np.asarray(c_total, dtype=float)
    se, st = np.asarray(s_events, dtype=float), np.asarray(s_total, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        pc, ps = ce / ct, se / st

        def wilson(p: np.ndarray, n: np.ndarray, sign: float) -> np.ndarray:
            denom = 1 + z * z / n
            centre = (p + z * z / (2 * n)) / denom
            half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
            return np.asarray(np.clip(centre + sign * half, 0.0, 1.0))

        uc = wilson(pc, ct, 1.0)
        ls = wilson(ps, st, -1.0)
        bound = pc - ps + np.sqrt((uc - pc) ** 2 + (ps - ls) ** 2)
    return np.asarray(np.where((ct > 0) & (st > 0), bound, np.inf))


def samples_until_within(
    c_events: float,
    c_total: float,
    s_events: float,
    s_total: float,
    margin: float,
    confidence: float,
    max_factor: float = 1e4,
) -> float:
    """Candidate requests at which :func:`difference_upper_bound` falls below ``margin`` if
    both versions had their observed rates and traffic shares (fewer than ``c_total`` when
    the evidence is more than enough; ``inf``: not within ``max_factor`` times the evidence,
    or never, when the observed difference is not below the margin).

    The counts are scaled up together on a fine geometric grid and the bound itself is
    evaluated, so the answer is right at zero and few errors too, where a normal-approximation
    sample size formula says "almost none".
    """
    if c_total <= 0 or s_total <= 0 or margin <= 0:
        return math.inf
    factors = np.geomspace(1.0 / max_factor, max_factor, 2400)
    bounds = difference_upper_bounds(
        c_events * factors, c_total * factors, s_events * factors, s_total * factors, confidence
    )
    within = np.nonzero(bounds < margin)[0]
    return math.inf if len(within) == 0 else float(c_total * factors[within[0]])


def exceedance_p_values(c_counts: np.ndarray, s_counts: np.ndarray, q: float) -> np.ndarray:
    """Is the candidate's tail above stable's q-quantile heavier? Two bucket tests per row.

    ``c_counts`` and ``s_counts`` are per-bucket (not cumulative) counts, one row per
    comparison, on the same bounds. Around stable's q-quantile lie two bucket bounds: the
    upper bound of the bucket holding it and the one below. For each, the requests above it
    are counted for both versions and compared with the exact conditional test of
    :func:`rate_increase_p_values` (an "error" is a request slower than the bound). Under
    equal latency distributions the candidate's share of those slow requests is its share
    of the traffic, whatever the distribution, so the test is exact on binned data, where
    the quantile ratio is not. Returns the two p-values per row (columns: the bound below,
    the bound above; 1 where a bound does not exist).
    """
    c = np.atleast_2d(np.asarray(c_counts, dtype=float))
    s = np.atleast_2d(np.asarray(s_counts, dtype=float))
    s_cum = np.cumsum(s, axis=1)
    c_cum = np.cumsum(c, axis=1)
    s_total, c_total = s_cum[:, -1], c_cum[:, -1]
    holding = np.argmax(s_cum >= q * s_total[:, None], axis=1)  # bucket of the quantile
    last = c.shape[1] - 1
    out = np.ones((c.shape[0], 2))
    for col, idx in enumerate((holding - 1, holding)):
        ok = (idx >= 0) & (idx < last)
        i = np.clip(idx, 0, last)
        rows = np.arange(c.shape[0])
        c_above = c_total - c_cum[rows, i]
        s_above = s_total - s_cum[rows, i]
        p = rate_increase_p_values(c_above, c_total, s_above, s_total)
        out[:, col] = np.where(ok & (s_total > 0) & (c_total > 0), p, 1.0)
    return out
