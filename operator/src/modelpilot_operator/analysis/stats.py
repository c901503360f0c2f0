"""The statistics behind the built-in checks, on plain numbers (no I/O).

Every test is one-sided: a rollout is stopped when the candidate is *worse* than stable;
being better is never a failure. Counts from Prometheus ``increase()`` are extrapolated
floats; they are rounded to whole requests before a test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

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

    One-sided Fisher exact test (hypergeometric): exact at the small counts a canary sees
    (a handful of errors per interval), where the normal approximation of the z-test is poor.
    The z statistic is reported alongside because it is the familiar number.
    """
    z = two_proportion_z(c_events, c_total, s_events, s_total)
    if c_total <= 0 or s_total <= 0:
        return TestResult(z, math.nan)
    total = c_total + s_total
    events = c_events + s_events
    p = float(stats.hypergeom.sf(c_events - 1, total, events, c_total))
    return TestResult(z, min(1.0, max(0.0, p)))


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
