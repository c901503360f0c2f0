"""Quality of rollout decisions: synthetic traffic through the real engine and analysis.

Each simulated rollout runs the rollout engine (``rollout.reconcile``) tick by tick in virtual
time; traffic at a fixed request rate is split by the weights the engine put on the route;
every analysis interval the real analysis code (``analysis.analyze``) queries a stand-in
Prometheus (``tests.fakeprom`` through ``httpx.MockTransport``) that answers from the
simulated counters, with the runtime's histogram buckets. The same rollouts are also judged
by a fixed-threshold rule like Flagger's (per interval: error rate above a threshold, p99
above a threshold, or no data, is a failed check).

    .venv/bin/python -m benchmarks.analysis.simulate --rollouts 1000 --out benchmarks/analysis
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from modelpilot_operator.analysis import AnalysisOutcome, MetricSource, Target, analyze, stats
from modelpilot_operator.api.v1alpha1 import (
    AnalysisRecord,
    CheckResult,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Rollout,
)
from modelpilot_operator.rollout import AnalysisWindow, Observations, analysis_due, reconcile
from modelpilot_runtime.metrics import LATENCY_BUCKETS
from tests.fakeprom import FakePrometheus, VersionData

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TICK = 10.0  # seconds between engine ticks (and traffic chunks)
BOUNDS = [*LATENCY_BUCKETS, math.inf]
TARGET = Target(namespace="bench", name="model", stable="v1", candidate="v2")


@dataclass(frozen=True)
class Scenario:
    name: str
    error_rate: float  # candidate's; stable's is the baseline
    latency_factor: float  # candidate latencies = stable latencies x this


@dataclass(frozen=True)
class Setup:
    rps: float = 20.0
    baseline_error: float = 0.01
    median_latency: float = 0.030
    latency_sigma: float = 0.5
    failure_limit: int = 1
    max_ratio: float = 1.05
    significance: float = 0.01
    min_samples: int = 100
    steps: tuple[tuple[int, str], ...] = ((10, "2m"), (25, "2m"), (50, "2m"))


def make_spec(setup: Setup) -> ModelDeploymentSpec:
    obj = {
        "metadata": {"name": TARGET.name, "namespace": TARGET.namespace},
        "spec": {
            "versions": [
                {"name": "v1", "model": {"storageUri": "s3://m/1/"}},
                {"name": "v2", "model": {"storageUri": "s3://m/2/"}},
            ],
            "stable": "v1",
            "rollout": {
                "candidate": "v2",
                "steps": [{"weight": w, "pause": p} for w, p in setup.steps],
                "analysis": {
                    "interval": "1m",
                    "minSamples": setup.min_samples,
                    "failureLimit": setup.failure_limit,
                    "significance": setup.significance,
                    "inconclusiveDeadline": "10m",
                    "checks": [
                        {"name": "error-rate", "builtin": "errorRate"},
                        {"name": "p99", "builtin": "latencyP99", "maxRatio": setup.max_ratio},
                    ],
                },
            },
        },
    }
    return ModelDeployment.model_validate(obj).spec


class Traffic:
    """Per-version counters in 10-second chunks, answered per window like Prometheus."""

    def __init__(self, setup: Setup, scenario: Scenario, rng: np.random.Generator) -> None:
        self.rng = rng
        self.setup = setup
        self.err = {"v1": setup.baseline_error, "v2": scenario.error_rate}
        mu = math.log(setup.median_latency)
        self.bucket_p: dict[str, np.ndarray] = {}
        for v, f in (("v1", 1.0), ("v2", scenario.latency_factor)):
            cdf = sps.norm.cdf(
                (np.log(np.asarray(LATENCY_BUCKETS)) - mu - math.log(f)) / setup.latency_sigma
            )
            p = np.diff(np.concatenate(([0.0], cdf, [1.0])))
            self.bucket_p[v] = p / p.sum()
        # cumulative sums at the end of each chunk: [total, errors, buckets...]
        self.cum = {v: [np.zeros(2 + len(BOUNDS))] for v in ("v1", "v2")}

    def advance(self, weights: dict[str, int]) -> None:
        n = int(self.rng.poisson(self.setup.rps * TICK))
        share = weights.get("v2", 0) / 100.0
        n2 = int(self.rng.binomial(n, share))
        for v, k in (("v1", n - n2), ("v2", n2)):
            row = np.zeros(2 + len(BOUNDS))
            row[0] = k
            row[1] = self.rng.binomial(k, self.err[v]) if k else 0
            row[2:] = self.rng.multinomial(k, self.bucket_p[v]) if k else 0
            self.cum[v].append(self.cum[v][-1] + row)

    def window(self, version: str, at: float, seconds: float) -> np.ndarray:
        chunks = self.cum[version]
        end = min(len(chunks) - 1, round((at - T0.timestamp()) / TICK))
        start = max(0, end - round(seconds / TICK))
        return chunks[end] - chunks[start]

    def data(self, version: str, at: float, seconds: float) -> VersionData:
        w = self.window(version, at, seconds)
        total, errors = float(w[0]), float(w[1])
        return VersionData(
            codes={"200": total - errors, "500": errors},
            buckets=list(zip(BOUNDS, np.cumsum(w[2:]).tolist(), strict=True)),
        )


def flagger_like(
    rollout: Rollout,
    target: Target,
    window: AnalysisWindow,
    source: MetricSource,
    error_max: float,
    p99_max: float,
) -> AnalysisOutcome:
    """A fixed-threshold rule on the last interval only, as Flagger's metric checks do:
    error rate above ``error_max`` or p99 above ``p99_max`` fails; no data fails too."""
    t, end, s = target, window.end, window.seconds
    counts = source.request_counts(t, t.candidate, end, s)
    buckets = source.latency_buckets(t, t.candidate, end, s)
    rate = counts.errors / counts.total if counts.total else math.nan
    p99 = stats.histogram_quantile(0.99, buckets)
    checks = [
        CheckResult(
            name="error-rate",
            verdict="pass" if rate <= error_max else "fail",
            candidate_value=None if math.isnan(rate) else rate,
        ),
        CheckResult(
            name="p99",
            verdict="pass" if p99 <= p99_max else "fail",
            candidate_value=None if math.isnan(p99) else p99,
        ),
    ]
    verdict = "fail" if any(c.verdict == "fail" for c in checks) else "pass"
    return AnalysisOutcome(
        AnalysisRecord(
            at=window.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            step=window.step,
            window="1m",
            verdict=verdict,
            checks=checks,
        )
    )


Judge = Callable[[Rollout, Target, AnalysisWindow, MetricSource], AnalysisOutcome]


@dataclass
class Outcome:
    result: str  # Promoted | RolledBack | Failed | Running
    intervals: int  # analysis intervals until the end


def run_rollout(
    spec: ModelDeploymentSpec, traffic: Traffic, judge: Judge, limit_s: float = 3600.0
) -> Outcome:
    fake = FakePrometheus(traffic.data)
    source = fake.source()
    status = ModelDeploymentStatus()
    route: dict[str, int] = {"v1": 100}
    ro = spec.rollout
    assert ro is not None
    now = T0
    intervals = 0
    while (now - T0).total_seconds() < limit_s:
        window = analysis_due(spec, status, now)
        rec = None
        if window is not None:
            rec = judge(ro, TARGET, window, source).record
            intervals += 1
        d = reconcile(
            spec, status, Observations(weights=route, candidate_ready=True, analysis=rec), now
        )
        status, route = d.status, dict(d.weights)
        if status.phase in ("Promoted", "RolledBack", "Failed"):
            source.client.close()
            return Outcome(status.phase, intervals)
        traffic.advance(route)
        now += timedelta(seconds=TICK)
    source.client.close()
    return Outcome("Running", intervals)


def true_p99(setup: Setup) -> float:
    return setup.median_latency * math.exp(2.3263 * setup.latency_sigma)


def simulate(setup: Setup, scenarios: list[Scenario], n: int, seed: int) -> list[dict[str, Any]]:
    spec = make_spec(setup)
    rows = []
    judges: dict[str, Judge] = {
        "modelpilot": analyze,
        "fixed threshold": lambda r, t, w, s: flagger_like(
            r, t, w, s, error_max=setup.baseline_error + 0.005, p99_max=1.1 * true_p99(setup)
        ),
    }
    for scenario in scenarios:
        for jname, judge in judges.items():
            rng = np.random.default_rng(seed)
            outs = [run_rollout(spec, Traffic(setup, scenario, rng), judge) for _ in range(n)]
            rolled = [o for o in outs if o.result in ("RolledBack", "Failed")]
            within5 = [o for o in rolled if o.intervals <= 5]
            rows.append(
                {
                    "scenario": scenario.name,
                    "judge": jname,
                    "rollouts": n,
                    "rolled_back": len(rolled) / n,
                    "failed_inconclusive": sum(o.result == "Failed" for o in outs) / n,
                    "within_5": len(within5) / n,
                    "median_intervals": float(np.median([o.intervals for o in rolled]))
                    if rolled
                    else math.nan,
                    "intervals_hist": np.bincount(
                        [o.intervals for o in rolled], minlength=12
                    ).tolist()
                    if rolled
                    else [],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--baseline-error", type=float, default=0.01)
    ap.add_argument("--failure-limit", type=int, default=1)
    ap.add_argument("--significance", type=float, default=0.01)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/analysis"))
    args = ap.parse_args()
    setup = Setup(
        baseline_error=args.baseline_error,
        failure_limit=args.failure_limit,
        significance=args.significance,
    )
    b = setup.baseline_error
    scenarios = [
        Scenario("A/A (identical)", b, 1.0),
        Scenario("+1 pt error rate", b + 0.01, 1.0),
        Scenario("+20% latency (p99)", b, 1.2),
    ]
    started = time.perf_counter()
    rows = simulate(setup, scenarios, args.rollouts, args.seed)
    elapsed = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"base{b:g}-fl{setup.failure_limit}-a{setup.significance:g}"
    (args.out / f"results-{tag}.json").write_text(
        json.dumps({"setup": asdict(setup), "seconds": elapsed, "rows": rows}, indent=1)
    )
    print(f"{elapsed:.0f}s")


if __name__ == "__main__":
    main()
