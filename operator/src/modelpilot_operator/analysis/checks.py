"""Run a rollout's checks for one interval and turn the numbers into verdicts.

Evidence accumulates: the built-in comparisons use every request both versions answered
since the rollout (of this candidate revision) started, over the same window for both, and
not only the last interval. At 20 requests/s a 10% canary answers about 120 requests a
minute, a few errors at most: no test can tell +1 point of error rate from noise on one
interval, but the evidence of several intervals can. The values of the interval itself are
in each result's message.

Verdicts:

- ``inconclusive``: fewer than ``minSamples`` requests for either version in the evidence,
  no candidate request in the interval, NaN or empty results, a query Prometheus rejects, or
  Prometheus unreachable. Never a pass and never a failure.
- ``fail``: errorRate: the candidate's error rate is higher than stable's by the
  group-sequential test (:mod:`.sequential`: the exact one-sided conditional p-value of the
  cumulative counts below the nominal level of this look, from an alpha-spending design over
  the rollout's planned looks, so a candidate as good as stable is rolled back with
  probability at most ``significance`` over the whole rollout), or above ``max`` when set.
  latencyP50/P99: the candidate's quantile is more than ``maxRatio`` times stable's (1.1 when
  unset) *and* the candidate is significantly slower: a one-sided rank test on the
  histograms, or the exact count test on the requests slower than either bucket bound
  around stable's quantile (:func:`.stats.exceedance_p_values`), below the
  group-sequential level of its share of the check's alpha. A ratio from a few slow
  requests is not enough, nor is a significant but harmless slow-down.
  predictionDivergence: Jensen-Shannon divergence of the class distributions above ``max``
  (0.02 bits when unset) *and* a G-test of homogeneity below the group-sequential level of
  the look. Custom query: the value outside ``min``/``max``.
- ``pass``: otherwise; for an errorRate check with a ``tolerance``, only when the upper
  ``confidence`` bound of the difference of the error rates (Newcombe's hybrid score) is
  below the tolerance: the candidate is shown not worse by more than that. Until then the
  check is ``inconclusive`` and says how many more candidate requests it needs at the
  observed rates ("waiting for evidence"), so the step holds until the evidence suffices or
  ``inconclusiveDeadline`` fails the rollout.

The interval's verdict: ``fail`` if any check failed, else ``inconclusive`` if any check was,
else ``pass``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..api.v1alpha1 import (
    AnalysisRecord,
    Check,
    CheckResult,
    Rollout,
    format_duration,
    parse_duration,
    render_query,
)
from ..api.v1alpha1.status import Verdict
from ..rollout import AnalysisWindow, format_time, required_passes
from . import sequential, stats
from .prometheus import MetricSource, MetricsUnavailableError, QueryError, Target

DEFAULT_MAX_RATIO = 1.1
DEFAULT_MAX_DIVERGENCE = 0.02
QUANTILES = {"latencyP50": 0.5, "latencyP99": 0.99}


@dataclass(frozen=True)
class AnalysisOutcome:
    """The record of one interval, and why Prometheus could not be read, if it could not."""

    record: AnalysisRecord
    unavailable: str | None = None


@dataclass(frozen=True)
class _Ctx:
    rollout: Rollout
    target: Target
    window: AnalysisWindow
    source: MetricSource

    @property
    def min_samples(self) -> int:
        return self.rollout.analysis.min_samples

    @property
    def look(self) -> int:
        """Which look at the accumulating evidence this is (1 for the first interval)."""
        interval = parse_duration(self.rollout.analysis.interval)
        return max(1, round(self.window.cumulative_seconds / interval))

    @property
    def level(self) -> float:
        """The nominal level of this look for every statistical check.

        The evidence accumulates, so the same tests are repeated on growing data: the levels
        come from the rollout's group-sequential design (:func:`error_rate_design`), which
        keeps the chance of a false alarm over the whole rollout within ``significance``.
        """
        return sequential.nominal_level(error_rate_design(self.rollout), self.look)

    def evidence(self) -> str:
        return (
            f"since the rollout started ({format_duration(round(self.window.cumulative_seconds))})"
        )


def planned_information(rollout: Rollout) -> tuple[float, ...]:
    """Information each planned look adds to a two-sample comparison of rates.

    With a share ``w`` of the traffic on the candidate, an interval of N requests informs the
    difference of the two rates as much as ``N * w * (1 - w)`` paired requests would; the
    scale does not matter, only the proportions. Canary: one look per required passing
    interval of each step, at the step's weight. abTest, shadow, blueGreen: ``iterations``
    looks at a constant share.
    """
    if rollout.strategy != "canary":
        return (1.0,) * rollout.iterations
    looks: list[float] = []
    for i, step in enumerate(rollout.steps):
        w = min(max(step.weight / 100.0, 0.01), 0.99)
        looks += [w * (1 - w)] * required_passes(rollout, i)
    return tuple(looks)


STATISTICAL_CHECKS = frozenset({"errorRate", "latencyP50", "latencyP99", "predictionDivergence"})


def error_rate_design(rollout: Rollout) -> sequential.Design:
    """The group-sequential design of a rollout's statistical checks.

    ``significance`` is shared by the statistical built-ins (Bonferroni): with an error-rate
    and a p99 check each gets half, so that a candidate as good as stable is rolled back by
    either with probability at most ``significance`` over the rollout.
    """
    tests = sum(1 for c in rollout.analysis.checks if c.builtin in STATISTICAL_CHECKS)
    return sequential.Design(
        alpha=rollout.analysis.significance / max(1, tests),
        increments=planned_information(rollout),
    )


def analyze(
    rollout: Rollout, target: Target, window: AnalysisWindow, source: MetricSource
) -> AnalysisOutcome:
    """Evaluate every check of ``rollout`` for ``window``; never raises for metric trouble."""
    ctx = _Ctx(rollout, target, window, source)
    results: list[CheckResult] = []
    unavailable: str | None = None
    for check in rollout.analysis.checks:
        try:
            result = _evaluate(ctx, check)
        except MetricsUnavailableError as exc:
            unavailable = str(exc)
            result = CheckResult(
                name=check.name, verdict="inconclusive", message=f"no metrics: {exc}"
            )
        except QueryError as exc:
            result = CheckResult(name=check.name, verdict="inconclusive", message=str(exc))
        results.append(result)
    return AnalysisOutcome(
        AnalysisRecord(
            at=format_time(window.end),
            step=window.step,
            window=format_duration(max(1, round(window.seconds))),
            verdict=combine(r.verdict for r in results),
            checks=results,
        ),
        unavailable,
    )


def combine(verdicts: object) -> Verdict:
    """fail if any failed, else inconclusive if any was, else pass (also for no checks)."""
    seen = set(verdicts)  # type: ignore[call-overload]
    if "fail" in seen:
        return "fail"
    if "inconclusive" in seen:
        return "inconclusive"
    return "pass"


def _evaluate(ctx: _Ctx, check: Check) -> CheckResult:
    if check.query is not None:
        return _custom(ctx, check)
    run: dict[str, Callable[[_Ctx, Check], CheckResult]] = {
        "errorRate": _error_rate,
        "latencyP50": _latency,
        "latencyP99": _latency,
        "predictionDivergence": _divergence,
    }
    assert check.builtin is not None
    return run[check.builtin](ctx, check)


def _inconclusive(check: Check, why: str, **values: float | int | None) -> CheckResult:
    return CheckResult(name=check.name, verdict="inconclusive", message=why, **_clean(values))


def _rate(events: float, total: float) -> float:
    return events / total if total > 0 else math.nan


def _pct(events: float, total: float) -> str:
    return f"{events:.0f}/{total:.0f}" + (f" ({100 * events / total:.2f}%)" if total > 0 else "")


def _error_rate(ctx: _Ctx, check: Check) -> CheckResult:
    w, t, src = ctx.window, ctx.target, ctx.source
    c = src.request_counts(t, t.candidate, w.end, w.cumulative_seconds)
    s = src.request_counts(t, t.stable, w.end, w.cumulative_seconds)
    ci = src.request_counts(t, t.candidate, w.end, w.seconds)
    si = src.request_counts(t, t.stable, w.end, w.seconds)
    ct, ce, st_, se = round(c.total), round(c.errors), round(s.total), round(s.errors)
    detail = (
        f"errors {ctx.evidence()}: candidate {_pct(ce, ct)}, stable {_pct(se, st_)}; "
        f"this interval: candidate {_pct(ci.errors, ci.total)}, stable {_pct(si.errors, si.total)}"
    )
    values: dict[str, float | int | None] = {
        "candidate_value": _rate(ce, ct),
        "stable_value": _rate(se, st_),
        "candidate_samples": ct,
        "stable_samples": st_,
        "threshold": ctx.level,
    }
    if any(math.isnan(x) for x in (c.total, c.errors, s.total, s.errors)):
        return _inconclusive(check, f"NaN in the request counts; {detail}", **values)
    if ci.total < 0.5:
        return _inconclusive(check, f"no candidate requests in this interval; {detail}", **values)
    if ct < ctx.min_samples or st_ < ctx.min_samples:
        return _inconclusive(
            check, f"fewer than minSamples {ctx.min_samples} requests; {detail}", **values
        )
    design = error_rate_design(ctx.rollout)
    level = ctx.level
    values["threshold"] = level
    test = stats.rate_increase_test(ce, ct, se, st_)
    rate = ce / ct
    look = f"look {ctx.look} of {design.planned_looks} planned, nominal level {level:.3g}"
    needed: int | None = None
    planned: int | None = None
    if check.max is not None and rate > check.max:
        verdict: Verdict = "fail"
        why = f"candidate error rate {rate:.4f} above max {check.max}"
    elif level > 0 and test.p_value <= level:
        verdict, why = "fail", f"candidate error rate higher than stable (p={test.p_value:.3g})"
    elif check.tolerance is None:
        verdict, why = "pass", f"no evidence of a higher error rate (p={test.p_value:.3g})"
    else:
        verdict, why, needed, planned = _within_tolerance(ctx, check.tolerance, ce, ct, se, st_)
        why = f"{why}; no evidence of a higher error rate (p={test.p_value:.3g})"
    return CheckResult(
        name=check.name,
        verdict=verdict,
        statistic=_finite(test.statistic),
        p_value=_finite(test.p_value),
        needed_samples=needed,
        planned_samples=planned,
        message=f"{why}; group-sequential exact conditional test, {look}, "
        f"z={test.statistic:.2f}; {detail}",
        **_clean(values),
    )


def _within_tolerance(
    ctx: _Ctx, tolerance: float, ce: int, ct: int, se: int, st_: int
) -> tuple[Verdict, str, int | None, int | None]:
    """Non-inferiority: is the candidate shown not worse than stable by ``tolerance``?

    Also returns how many more candidate requests the bound needs at the observed rates and
    shares (0 when it passes, ``None`` when more requests at these rates will not do), and
    the planned sample size: the candidate requests at which the bound falls below the
    tolerance when both versions have the pooled error rate (a candidate as good as stable,
    the median case).
    """
    confidence = ctx.rollout.analysis.confidence
    upper = stats.difference_upper_bound(ce, ct, se, st_, confidence)
    pooled = (ce + se) / (ct + st_)
    planned_f = stats.samples_until_within(
        pooled * ct, ct, pooled * st_, st_, tolerance, confidence
    )
    planned = math.ceil(planned_f) if math.isfinite(planned_f) else None
    bound = f"upper {confidence:.0%} bound of the difference {upper:+.4f}, tolerance {tolerance}"
    if upper < tolerance:
        return "pass", f"within tolerance: {bound}", 0, planned
    need = stats.samples_until_within(ce, ct, se, st_, tolerance, confidence)
    if not math.isfinite(need):
        diff = ce / ct - se / st_
        why = (
            f"waiting for evidence: at the observed difference {diff:+.4f} more requests at "
            f"this rate will not show the candidate within the tolerance; {bound}"
        )
        return "inconclusive", why, None, planned
    more = max(1, math.ceil(need) - ct)
    why = f"waiting for evidence: {more} more candidate requests needed at this rate; {bound}"
    return "inconclusive", why, more, planned


def _latency(ctx: _Ctx, check: Check) -> CheckResult:
    w, t, src = ctx.window, ctx.target, ctx.source
    q = QUANTILES[check.builtin or "latencyP99"]
    max_ratio = check.max_ratio or DEFAULT_MAX_RATIO
    cb = src.latency_buckets(t, t.candidate, w.end, w.cumulative_seconds)
    sb = src.latency_buckets(t, t.stable, w.end, w.cumulative_seconds)
    cn, sn = round(stats.histogram_count(cb)), round(stats.histogram_count(sb))
    cq, sq = stats.histogram_quantile(q, cb), stats.histogram_quantile(q, sb)
    values: dict[str, float | int | None] = {
        "candidate_value": cq,
        "stable_value": sq,
        "candidate_samples": cn,
        "stable_samples": sn,
        "threshold": max_ratio,
    }
    detail = (
        f"p{round(q * 100)} {ctx.evidence()}: candidate {cq:.4g}s over {cn} requests, "
        f"stable {sq:.4g}s over {sn}"
    )
    if cn < ctx.min_samples or sn < ctx.min_samples:
        return _inconclusive(
            check, f"fewer than minSamples {ctx.min_samples} requests; {detail}", **values
        )
    if math.isnan(cq) or math.isnan(sq) or sq <= 0:
        return _inconclusive(check, f"no usable histogram; {detail}", **values)
    ratio = cq / sq
    test = stats.rank_slower_test(cb, sb)
    bounds = sorted({float(le) for le, _ in cb} | {float(le) for le, _ in sb})
    tails = stats.exceedance_p_values(
        stats.bucket_counts(cb, bounds), stats.bucket_counts(sb, bounds), q
    )[0]
    # The check's share of significance is split: half for the rank test (the whole
    # distribution), a quarter for each bucket test (the tail around the quantile), each
    # at the group-sequential level of its share, so the check's false alarms stay within
    # its share over the rollout.
    rank_level, tail_level = latency_levels(ctx.rollout, ctx.look)
    slower = not math.isnan(test.p_value) and rank_level > 0 and test.p_value <= rank_level
    heavier = tail_level > 0 and float(tails.min()) <= tail_level
    tests = (
        f"one-sided Mann-Whitney on the buckets p={test.p_value:.3g} (level {rank_level:.3g}), "
        f"slow-request counts above the two bounds around stable's p{round(q * 100)} "
        f"p={tails[0]:.3g}, {tails[1]:.3g} (level {tail_level:.3g} each), look {ctx.look}"
    )
    if ratio > max_ratio and (slower or heavier):
        verdict: Verdict = "fail"
        why = f"ratio {ratio:.3f} above maxRatio {max_ratio} and slower"
    elif ratio > max_ratio:
        verdict, why = "pass", f"ratio {ratio:.3f} above maxRatio but not significant"
    else:
        verdict, why = "pass", f"ratio {ratio:.3f} within maxRatio {max_ratio}"
    return CheckResult(
        name=check.name,
        verdict=verdict,
        statistic=_finite(test.statistic),
        p_value=_finite(min(test.p_value, float(tails.min()))),
        message=f"{why}; {tests}; {detail}",
        **_clean(values),
    )


def latency_levels(rollout: Rollout, look: int) -> tuple[float, float]:
    """Nominal levels at ``look`` of a latency check's rank test and of each bucket test."""
    design = error_rate_design(rollout)
    rank = sequential.nominal_level(replace(design, alpha=design.alpha / 2), look)
    tail = sequential.nominal_level(replace(design, alpha=design.alpha / 4), look)
    return rank, tail


def _divergence(ctx: _Ctx, check: Check) -> CheckResult:
    w, t, src = ctx.window, ctx.target, ctx.source
    limit = check.max if check.max is not None else DEFAULT_MAX_DIVERGENCE
    cc = src.class_counts(t, t.candidate, w.end, w.cumulative_seconds)
    sc = src.class_counts(t, t.stable, w.end, w.cumulative_seconds)
    cn, sn = round(sum(cc.values())), round(sum(sc.values()))
    jsd = stats.jensen_shannon(cc, sc)
    psi = stats.population_stability_index(cc, sc)
    values: dict[str, float | int | None] = {
        "candidate_value": jsd,
        "stable_value": 0.0,
        "candidate_samples": cn,
        "stable_samples": sn,
        "threshold": limit,
    }
    detail = (
        f"{len(set(cc) | set(sc))} classes {ctx.evidence()}: {cn} candidate and {sn} stable "
        f"predictions, Jensen-Shannon {jsd:.4f} bits, PSI {psi:.4f}"
    )
    if cn < ctx.min_samples or sn < ctx.min_samples:
        return _inconclusive(
            check, f"fewer than minSamples {ctx.min_samples} predictions; {detail}", **values
        )
    if math.isnan(jsd):
        return _inconclusive(check, f"no class counts; {detail}", **values)
    test = stats.homogeneity_test(cc, sc)
    significant = not math.isnan(test.p_value) and ctx.level > 0 and test.p_value <= ctx.level
    if jsd > limit and significant:
        verdict: Verdict = "fail"
        why = f"divergence {jsd:.4f} above max {limit} (G-test p={test.p_value:.3g})"
    else:
        verdict, why = "pass", f"divergence {jsd:.4f} within max {limit} or not significant"
    return CheckResult(
        name=check.name,
        verdict=verdict,
        statistic=_finite(test.statistic),
        p_value=_finite(test.p_value),
        message=f"{why}; {detail}",
        **_clean(values),
    )


def _custom(ctx: _Ctx, check: Check) -> CheckResult:
    assert check.query is not None
    t, w = ctx.target, ctx.window
    variables = {
        "namespace": t.namespace,
        "name": t.name,
        "stable": t.stable,
        "candidate": t.candidate,
        "interval": format_duration(max(1, round(w.seconds))),
    }
    query = render_query(check.query, {**variables, "version": t.candidate})
    value = ctx.source.value(query, w.end)
    stable_value: float | None = None
    try:
        stable_value = ctx.source.value(
            render_query(check.query, {**variables, "version": t.stable}), w.end
        )
    except QueryError:
        stable_value = None
    bounds = f"min {check.min}, max {check.max}"
    if value is None or math.isnan(value):
        return CheckResult(
            name=check.name,
            verdict="inconclusive",
            stable_value=_finite(stable_value),
            message=f"the query returned {'nothing' if value is None else 'NaN'}: {query}",
        )
    low = check.min is not None and value < check.min
    high = check.max is not None and value > check.max
    verdict: Verdict = "fail" if low or high else "pass"
    return CheckResult(
        name=check.name,
        verdict=verdict,
        candidate_value=_finite(value),
        stable_value=_finite(stable_value),
        threshold=check.max if check.max is not None else check.min,
        message=f"value {value:.6g} {'outside' if verdict == 'fail' else 'within'} {bounds}: "
        f"{query}",
    )


def _finite(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return float(value)


def _clean(values: dict[str, float | int | None]) -> dict[str, float | int | None]:
    return {k: _finite(v) if isinstance(v, float) else v for k, v in values.items()}
