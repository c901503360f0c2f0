"""The benchmark's vectorised judge is the operator's: same verdicts on the same counts, and
the quick mode of the simulator runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from benchmarks.analysis import simulate as sim

from modelpilot_operator.analysis import Target, analyze
from modelpilot_operator.rollout import AnalysisWindow
from tests.fakeprom import FakePrometheus, VersionData

END = datetime(2025, 1, 1, 12, 10, tzinfo=UTC)
BOUNDS = list(sim.BOUNDS)


@pytest.mark.parametrize("seed", range(6))
def test_the_simulated_judge_agrees_with_analyze(seed: int) -> None:
    rng = np.random.default_rng(seed)
    setup = sim.Setup()
    ro = sim.make_rollout(setup)
    look = int(rng.integers(1, 8))
    ct, st = int(rng.integers(200, 3000)), int(rng.integers(2000, 20000))
    ce = int(rng.binomial(ct, rng.choice([0.01, 0.02, 0.03])))
    se = int(rng.binomial(st, 0.01))
    factor = float(rng.choice([1.0, 1.3]))
    hc = rng.multinomial(ct, sim.bucket_probabilities(setup, factor)).astype(float)
    hs = rng.multinomial(st, sim.bucket_probabilities(setup, 1.0)).astype(float)
    one = np.ones(1)
    ev = sim.Evidence(
        look, ct * one, ce * one, st * one, se * one, hc[None], hs[None],
        one, 0 * one, one, 0 * one, hc[None], hs[None],
    )  # fmt: skip
    verdict = int(sim._statistical(setup, ro, True, True)(ev)[0])

    def data(version: str, at: float, seconds: float) -> VersionData:
        n, e, h = (ct, ce, hc) if version == "v2" else (st, se, hs)
        f = 1.0 if seconds > 60 else 0.2
        return VersionData(
            codes={"200": (n - e) * f, "500": e * f},
            buckets=list(zip(BOUNDS, (np.cumsum(h) * f).tolist(), strict=True)),
        )

    window = AnalysisWindow(
        start=END - timedelta(minutes=1), end=END, since=END - timedelta(minutes=look), step=0
    )
    target = Target(namespace="bench", name="model", stable="v1", candidate="v2")
    record = analyze(ro, target, window, FakePrometheus(data).source()).record
    expected = {"pass": sim.PASS, "fail": sim.FAIL, "inconclusive": sim.INCONCLUSIVE}
    assert verdict == expected[record.verdict], record


def test_the_quick_mode_runs_and_keeps_aa_rollbacks_rare() -> None:
    rows = sim.simulate(200, seed=1, quick=True)
    aa = next(r for r in rows if r["scenario"] == "A/A" and r["judge"] == "modelpilot")
    assert aa["rolled_back"] <= 0.05
    bad = next(r for r in rows if r["scenario"] == "+1 pt errors")
    assert bad["promoted"] <= 0.05
