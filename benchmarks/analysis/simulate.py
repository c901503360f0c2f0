"""Quality of rollout decisions: five judges on the same simulated traffic, vectorised.

Every row simulates 1,000 rollouts at once (numpy arrays, one element per rollout): per
analysis interval, Poisson traffic split by each rollout's current step weight, binomial
errors and multinomial latency histograms on the runtime's buckets. The rollout rules are
the engine's (``rollout/engine.py``): a step needs its passing intervals, a failed interval
past ``failureLimit`` rolls back, inconclusive intervals past ``inconclusiveDeadline`` fail,
the evidence accumulates since the rollout started. Judges:

- ``modelpilot``: this repository's checks, through the same functions the operator calls
  (``analysis.stats`` on arrays, ``analysis.sequential`` boundaries of the rollout's design):
  group-sequential exact conditional test on errors, rank test and bucket-exceedance
  tests on latency at the same levels, and non-inferiority against
  ``errorRate.tolerance``.
- ``previous``: the judge before this change: the same tests at ``significance / k`` at look
  k, no tolerance (promotion on absence of evidence).
- ``fixed threshold``: Flagger-like, the last interval only: error rate above baseline +
  0.5 pt or p99 above 1.1 x the true stable p99 fails (tuned with knowledge of the baseline).
- ``kayenta-like``: per metric, a two-sided Mann-Whitney test of the candidate's
  per-interval values against stable's (all intervals so far) at 0.98 confidence; a metric
  significantly higher fails it; score = share of metrics passing; below 95 fails.
- ``best achievable``: not a rollout judge but the bound for the traffic: the exactly
  calibrated one-sided conditional test at level ``significance``, one look after the first
  5 intervals of the planned schedule, on the metric the scenario changes (error counts; for
  latency the one-sided rank test on the histograms, which uses every request).

    .venv/bin/python -m benchmarks.analysis.simulate            # full run, a few minutes
    .venv/bin/python -m benchmarks.analysis.simulate --quick    # 200 rollouts, few rows
    .venv/bin/python -m benchmarks.analysis.report benchmarks/analysis/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from modelpilot_operator.analysis import sequential, stats
from modelpilot_operator.analysis.checks import error_rate_design, latency_levels
from modelpilot_operator.api.v1alpha1 import ModelDeployment, Rollout
from modelpilot_operator.rollout import required_passes
from modelpilot_runtime.metrics import LATENCY_BUCKETS

BOUNDS = np.asarray([*LATENCY_BUCKETS, math.inf])
PASS, FAIL, INCONCLUSIVE = 0, 1, 2
ACTIVE, PROMOTED, ROLLED_BACK, FAILED = 0, 1, 2, 3
DETECT_WITHIN = 5


@dataclass(frozen=True)
class Setup:
    rps: float = 20.0
    baseline_error: float = 0.01
    median_latency: float = 0.030
    latency_sigma: float = 0.5
    strategy: str = "canary"
    steps: tuple[tuple[int, str], ...] = ((10, "2m"), (25, "2m"), (50, "2m"))
    ab_share: float = 0.1  # abTest: share of requests matching the candidate's route
    iterations: int = 200
    failure_limit: int = 0
    significance: float = 0.01
    tolerance: float = 0.005
    confidence: float = 0.95
    min_samples: int = 100
    max_ratio: float = 1.05
    deadline_intervals: int = 10


@dataclass(frozen=True)
class Scenario:
    name: str
    error_delta: float = 0.0  # candidate's error rate = baseline + this
    latency_factor: float = 1.0  # candidate latencies = stable latencies x this


def make_rollout(setup: Setup) -> Rollout:
    rollout: dict[str, Any] = {
        "candidate": "v2",
        "strategy": setup.strategy,
        "analysis": {
            "interval": "1m",
            "minSamples": setup.min_samples,
            "failureLimit": setup.failure_limit,
            "significance": setup.significance,
            "confidence": setup.confidence,
            "inconclusiveDeadline": f"{setup.deadline_intervals}m",
            "warmup": "0s",  # the simulated candidate is never cold
            "checks": [
                {"name": "error-rate", "builtin": "errorRate", "tolerance": setup.tolerance},
                {"name": "p99", "builtin": "latencyP99", "maxRatio": setup.max_ratio},
            ],
        },
    }
    if setup.strategy == "canary":
        rollout["steps"] = [{"weight": w, "pause": p} for w, p in setup.steps]
    else:
        rollout["iterations"] = setup.iterations
        rollout["match"] = [{"header": "x-cohort", "exact": "b"}]
    obj = {
        "metadata": {"name": "model", "namespace": "bench"},
        "spec": {
            "versions": [
                {"name": "v1", "model": {"storageUri": "s3://m/1/"}},
                {"name": "v2", "model": {"storageUri": "s3://m/2/"}},
            ],
            "stable": "v1",
            "rollout": rollout,
        },
    }
    ro = ModelDeployment.model_validate(obj).spec.rollout
    assert ro is not None
    return ro


def bucket_probabilities(setup: Setup, factor: float) -> np.ndarray:
    mu = math.log(setup.median_latency * factor)
    cdf = sps.norm.cdf((np.log(BOUNDS[:-1]) - mu) / setup.latency_sigma)
    p = np.diff(np.concatenate(([0.0], cdf, [1.0])))
    return np.asarray(p / p.sum())


def true_p99(setup: Setup) -> float:
    return setup.median_latency * math.exp(float(sps.norm.ppf(0.99)) * setup.latency_sigma)


# --- vectorised histogram statistics (the operator's, on arrays of rollouts) ------------


def quantiles(h: np.ndarray, q: float) -> np.ndarray:
    """PromQL ``histogram_quantile`` of per-bucket counts ``h`` (rollouts x buckets)."""
    cum = np.cumsum(h, axis=1)
    total = cum[:, -1]
    rank = q * total
    idx = np.argmax(cum >= rank[:, None], axis=1)
    finite = len(BOUNDS) - 1
    lower = np.where(idx > 0, BOUNDS[np.maximum(idx - 1, 0)], 0.0)
    below = np.where(idx > 0, np.take_along_axis(cum, np.maximum(idx - 1, 0)[:, None], 1)[:, 0], 0)
    inside = h[np.arange(len(h)), idx]
    upper = BOUNDS[np.minimum(idx, finite - 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = lower + (upper - lower) * (rank - below) / inside
    value = np.where(idx >= finite, BOUNDS[finite - 1], value)
    return np.where(total > 0, value, np.nan)


def rank_slower_p(hc: np.ndarray, hs: np.ndarray) -> np.ndarray:
    """One-sided tie-corrected Mann-Whitney p-values on binned latencies, per rollout."""
    n1, n2 = hc.sum(axis=1), hs.sum(axis=1)
    below = np.cumsum(hs, axis=1) - hs
    u = np.sum(hc * (below + 0.5 * hs), axis=1)
    n = n1 + n2
    ties = hc + hs
    with np.errstate(invalid="ignore", divide="ignore"):
        tie = np.sum(ties**3 - ties, axis=1) / (n * (n - 1))
        var = n1 * n2 / 12.0 * ((n + 1) - tie)
        z = (u - n1 * n2 / 2.0) / np.sqrt(var)
    return np.where((n1 > 0) & (n2 > 0) & (var > 0), sps.norm.sf(z), np.nan)


# --- the judges ----------------------------------------------------------------------


@dataclass
class Evidence:
    """Cumulative and per-interval counts of every rollout (rows) up to look ``look``."""

    look: int
    ct: np.ndarray
    ce: np.ndarray
    st: np.ndarray
    se: np.ndarray
    hc: np.ndarray
    hs: np.ndarray
    ic: np.ndarray  # this interval: candidate requests
    ice: np.ndarray
    ist: np.ndarray
    ise: np.ndarray
    ihc: np.ndarray
    ihs: np.ndarray
    series: dict[str, list[np.ndarray]] = field(default_factory=dict)


Judge = Callable[[Evidence], np.ndarray]


def _statistical(setup: Setup, ro: Rollout, sequential_levels: bool, tolerance: bool) -> Judge:
    design = error_rate_design(ro)

    def judge(ev: Evidence) -> np.ndarray:
        if sequential_levels:
            level = sequential.nominal_level(design, ev.look)
        else:
            level = setup.significance / ev.look
        enough = (ev.ct >= setup.min_samples) & (ev.st >= setup.min_samples) & (ev.ic > 0)
        p_err = stats.rate_increase_p_values(ev.ce, ev.ct, ev.se, ev.st)
        fail_err = p_err <= level if sequential_levels else p_err < level
        ratio = quantiles(ev.hc, 0.99) / quantiles(ev.hs, 0.99)
        p_lat = np.nan_to_num(rank_slower_p(ev.hc, ev.hs), nan=1.0)
        if sequential_levels:
            rank_level, tail_level = latency_levels(ro, ev.look)
            tails = stats.exceedance_p_values(ev.hc, ev.hs, 0.99).min(axis=1)
            sig = (p_lat <= rank_level) | (tails <= tail_level)
        else:
            sig = p_lat < level
        fail_lat = (ratio > setup.max_ratio) & sig
        verdict = np.full(len(ev.ct), PASS)
        if tolerance:
            upper = stats.difference_upper_bounds(ev.ce, ev.ct, ev.se, ev.st, setup.confidence)
            verdict = np.where(upper < setup.tolerance, PASS, INCONCLUSIVE)
        verdict = np.where(fail_err | fail_lat, FAIL, verdict)
        return np.where(enough, verdict, INCONCLUSIVE)

    return judge


def _fixed_threshold(setup: Setup) -> Judge:
    p99_max = 1.1 * true_p99(setup)
    error_max = setup.baseline_error + 0.005

    def judge(ev: Evidence) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = ev.ice / ev.ic
        p99 = quantiles(ev.ihc, 0.99)
        bad = (ev.ic <= 0) | (rate > error_max) | (p99 > p99_max)
        return np.where(bad, FAIL, PASS)

    return judge


def _kayenta_like(setup: Setup) -> Judge:
    def judge(ev: Evidence) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ev.series.setdefault("c_err", []).append(ev.ice / ev.ic)
            ev.series.setdefault("s_err", []).append(ev.ise / ev.ist)
            ev.series.setdefault("c_p99", []).append(quantiles(ev.ihc, 0.99))
            ev.series.setdefault("s_p99", []).append(quantiles(ev.ihs, 0.99))
        high = np.zeros(len(ev.ct), dtype=bool)
        failed_metrics = np.zeros(len(ev.ct))
        for metric in ("err", "p99"):
            c = np.nan_to_num(np.stack(ev.series[f"c_{metric}"], axis=1), nan=0.0)
            s = np.nan_to_num(np.stack(ev.series[f"s_{metric}"], axis=1), nan=0.0)
            if c.shape[1] < 2:
                continue
            res = sps.mannwhitneyu(c, s, axis=1, alternative="two-sided")
            high = (res.pvalue < 0.02) & (np.median(c, axis=1) > np.median(s, axis=1))
            failed_metrics += high
        score = 100.0 * (2 - failed_metrics) / 2
        verdict = np.where(score < 95, FAIL, PASS)
        return np.where(ev.ic > 0, verdict, INCONCLUSIVE)

    return judge


# --- the rollouts ------------------------------------------------------------------


@dataclass
class RowResult:
    outcome: np.ndarray  # PROMOTED / ROLLED_BACK / FAILED / ACTIVE per rollout
    intervals: np.ndarray  # intervals analysed until the outcome


def _schedule(setup: Setup, ro: Rollout) -> tuple[np.ndarray, np.ndarray]:
    if setup.strategy == "canary":
        shares = np.asarray([w / 100 for w, _ in setup.steps])
        needed = np.asarray([required_passes(ro, i) for i in range(len(setup.steps))])
    else:
        shares = np.asarray([setup.ab_share])
        needed = np.asarray([ro.iterations])
    return shares, needed


def run_row(
    setup: Setup, scenario: Scenario, judge_name: str, n: int, seed: int, horizon: int
) -> RowResult:
    ro = make_rollout(setup)
    judges: dict[str, Callable[[], Judge]] = {
        "modelpilot": lambda: _statistical(setup, ro, True, True),
        "previous": lambda: _statistical(setup, ro, False, False),
        "fixed threshold": lambda: _fixed_threshold(setup),
        "kayenta-like": lambda: _kayenta_like(setup),
    }
    judge = judges[judge_name]()
    rng = np.random.default_rng(seed)  # common random numbers across the judges
    shares, needed = _schedule(setup, ro)
    p_s = bucket_probabilities(setup, 1.0)
    p_c = bucket_probabilities(setup, scenario.latency_factor)
    e_s, e_c = setup.baseline_error, setup.baseline_error + scenario.error_delta
    k = len(BOUNDS)
    zeros = np.zeros(n)
    ct, ce, st, se = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
    hc, hs = np.zeros((n, k)), np.zeros((n, k))
    step = np.zeros(n, dtype=int)
    passes = np.zeros(n, dtype=int)
    fails = np.zeros(n, dtype=int)
    streak = np.zeros(n, dtype=int)
    outcome = np.full(n, ACTIVE)
    intervals = np.zeros(n, dtype=int)
    series: dict[str, list[np.ndarray]] = {}
    for look in range(1, horizon + 1):
        active = outcome == ACTIVE
        if not active.any():
            break
        share = shares[np.minimum(step, len(shares) - 1)]
        total = rng.poisson(setup.rps * 60, n)
        nc = rng.binomial(total, share)
        ns = total - nc
        ice, ise = rng.binomial(nc, e_c), rng.binomial(ns, e_s)
        ihc, ihs = rng.multinomial(nc, p_c), rng.multinomial(ns, p_s)
        ct += nc
        ce += ice
        st += ns
        se += ise
        hc += ihc
        hs += ihs
        ev = Evidence(look, ct, ce, st, se, hc, hs, nc, ice, ns, ise, ihc, ihs, series)
        verdict = judge(ev)
        intervals = np.where(active, look, intervals)
        failed = active & (verdict == FAIL)
        passed = active & (verdict == PASS)
        inconclusive = active & (verdict == INCONCLUSIVE)
        fails += failed
        streak = np.where(inconclusive, streak + 1, 0)
        outcome = np.where(failed & (fails > setup.failure_limit), ROLLED_BACK, outcome)
        outcome = np.where(
            inconclusive & (streak >= setup.deadline_intervals) & (outcome == ACTIVE),
            FAILED,
            outcome,
        )
        passes += passed
        done_step = passed & (passes >= needed[np.minimum(step, len(needed) - 1)])
        step = np.where(done_step, step + 1, step)
        passes = np.where(done_step, 0, passes)
        outcome = np.where(
            done_step & (step >= len(shares)) & (outcome == ACTIVE), PROMOTED, outcome
        )
    return RowResult(outcome, intervals)


def best_achievable(setup: Setup, scenario: Scenario, n: int, seed: int) -> float:
    """Power of the one-look exact test after the first 5 planned intervals."""
    ro = make_rollout(setup)
    shares, needed = _schedule(setup, ro)
    plan = np.repeat(shares, needed)
    plan = np.concatenate([plan, np.full(DETECT_WITHIN, plan[-1])])[:DETECT_WITHIN]
    rng = np.random.default_rng(seed)
    total = rng.poisson(setup.rps * 60, (n, DETECT_WITHIN))
    nc = rng.binomial(total, plan).sum(axis=1)
    ns = total.sum(axis=1) - nc
    if scenario.latency_factor != 1.0:
        # The rank test on the histograms uses every request, not only the tail: on a
        # scale shift it is the stronger of the two fixed-sample tests.
        hc = rng.multinomial(nc, bucket_probabilities(setup, scenario.latency_factor))
        hs = rng.multinomial(ns, bucket_probabilities(setup, 1.0))
        return float(np.mean(np.nan_to_num(rank_slower_p(hc, hs), nan=1.0) <= setup.significance))
    p_s = setup.baseline_error
    p_c = setup.baseline_error + scenario.error_delta
    ec, es = rng.binomial(nc, p_c), rng.binomial(ns, p_s)
    p = stats.rate_increase_p_values(ec, nc, es, ns)
    return float(np.mean(p <= setup.significance))


def summarise(res: RowResult, planned: int) -> dict[str, Any]:
    n = len(res.outcome)
    rolled = np.isin(res.outcome, (ROLLED_BACK,))
    promoted = res.outcome == PROMOTED
    ended_bad = np.isin(res.outcome, (ROLLED_BACK, FAILED))
    hist = np.bincount(res.intervals[rolled], minlength=1).tolist() if rolled.any() else []
    return {
        "rollouts": n,
        "rolled_back": float(rolled.mean()),
        "failed_inconclusive": float((res.outcome == FAILED).mean()),
        "promoted": float(promoted.mean()),
        "promoted_in_plan": float((promoted & (res.intervals <= planned)).mean()),
        "still_running": float((res.outcome == ACTIVE).mean()),
        "detected_within_5": float((rolled & (res.intervals <= DETECT_WITHIN)).mean()),
        "stopped_within_5": float((ended_bad & (res.intervals <= DETECT_WITHIN)).mean()),
        "median_intervals_to_rollback": float(np.median(res.intervals[rolled]))
        if rolled.any()
        else math.nan,
        "median_intervals_to_promotion": float(np.median(res.intervals[promoted]))
        if promoted.any()
        else math.nan,
        "rollback_hist": hist,
    }


JUDGES = ("modelpilot", "previous", "fixed threshold", "kayenta-like")


def plan_rows(quick: bool) -> list[tuple[str, Setup, Scenario, tuple[str, ...]]]:
    base = Setup()
    low = replace(base, baseline_error=0.001)
    ab = replace(base, strategy="abTest", iterations=200)
    rows: list[tuple[str, Setup, Scenario, tuple[str, ...]]] = []
    if quick:
        return [
            ("canary", base, Scenario("A/A"), ("modelpilot", "previous")),
            ("canary", base, Scenario("+1 pt errors", error_delta=0.01), ("modelpilot",)),
        ]
    for setup, label in ((low, "A/A (0.1% errors)"), (base, "A/A (1% errors)")):
        rows.append(("canary", setup, Scenario(label), JUDGES))
    rows += [
        ("canary", base, Scenario("+0.5 pt errors", error_delta=0.005), JUDGES),
        ("canary", base, Scenario("+1 pt errors", error_delta=0.01), JUDGES),
        ("canary", base, Scenario("+20% p99", latency_factor=1.2), JUDGES),
        ("canary", base, Scenario("+50% p99", latency_factor=1.5), JUDGES),
        ("abTest 200", ab, Scenario("A/A (1% errors)"), JUDGES),
        ("abTest 200", ab, Scenario("+1 pt errors", error_delta=0.01), JUDGES),
    ]
    for rps in (5.0, 50.0, 200.0, 1000.0):
        s = replace(base, rps=rps)
        rows.append((f"canary {rps:g} req/s", s, Scenario("A/A (1% errors)"), JUDGES[:2]))
        rows.append(
            (
                f"canary {rps:g} req/s",
                s,
                Scenario("+1 pt errors", error_delta=0.01),
                JUDGES[:2],
            )
        )
    return rows


def simulate(n: int, seed: int, quick: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rows = plan_rows(quick)
    started = time.perf_counter()
    for i, (family, setup, scenario, judges) in enumerate(rows, start=1):
        ro = make_rollout(setup)
        planned = int(sum(_schedule(setup, ro)[1]))
        horizon = planned + 6 * setup.deadline_intervals
        best = best_achievable(setup, scenario, n, seed + 1)
        for judge in judges:
            res = run_row(setup, scenario, judge, n, seed, horizon)
            row = {
                "family": family,
                "scenario": scenario.name,
                "judge": judge,
                "rps": setup.rps,
                "baseline_error": setup.baseline_error,
                "planned_intervals": planned,
                "best_within_5": best,
                **summarise(res, planned),
            }
            out.append(row)
            print(
                f"[{i}/{len(rows)} {time.perf_counter() - started:5.0f}s] {family:<18} "
                f"{scenario.name:<18} {judge:<16} rolled back {row['rolled_back']:6.1%}  "
                f"within 5 {row['detected_within_5']:6.1%} (best {best:6.1%})  "
                f"promoted {row['promoted']:6.1%}  failed {row['failed_inconclusive']:6.1%}",
                file=sys.stderr,
                flush=True,
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--quick", action="store_true", help="200 rollouts, two rows")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/analysis"))
    args = ap.parse_args()
    n = 200 if args.quick else args.rollouts
    started = time.perf_counter()
    rows = simulate(n, args.seed, args.quick)
    elapsed = time.perf_counter() - started
    if args.quick:
        print(json.dumps(rows, indent=1))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {"setup": asdict(Setup()), "seconds": elapsed, "rows": rows}, indent=1, default=str
        )
    )
    print(f"{elapsed:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
