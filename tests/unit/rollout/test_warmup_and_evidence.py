"""The warm-up is never judged, and a step waiting for evidence says so until its deadline."""

from __future__ import annotations

from datetime import timedelta

from modelpilot_operator.api.v1alpha1 import AnalysisRecord, CheckResult, ModelDeploymentStatus
from modelpilot_operator.rollout import Observations, analysis_due, format_time, reconcile

from .harness import T0, Sim, make_spec


def test_the_first_interval_is_a_warm_up_by_default_and_is_not_analysed() -> None:
    sim = Sim(make_spec(steps=[{"weight": 10}], analysis={"warmup": None}))
    sim.tick()
    sim.tick(advance=10)  # the step starts: weights on the route
    assert sim.status.step_started_at is not None
    started = sim.now
    for _ in range(5):  # 50 s of the 60 s warm-up
        sim.tick(advance=10)
        assert analysis_due(sim.spec, sim.status, sim.now) is None
        assert "warming up" in sim.status.message
    sim.tick(advance=10)  # 60 s: the warm-up is over, evidence starts now
    assert "WarmedUp" in sim.reasons()
    assert sim.status.rollout_started_at == format_time(started + timedelta(seconds=60))
    assert sim.status.passed_intervals == 0
    sim.run(50)
    assert analysis_due(sim.spec, sim.status, sim.now) is None
    window = analysis_due(sim.spec, sim.status, sim.now + timedelta(seconds=10))
    assert window is not None
    # The evidence and the first interval both start at the end of the warm-up.
    assert window.since == window.start == started + timedelta(seconds=60)
    sim.until("Promoted")


def test_warmup_by_duration_and_off() -> None:
    sim = Sim(make_spec(steps=[{"weight": 10}], analysis={"warmup": "2m"}))
    sim.tick()
    sim.tick(advance=10)
    sim.run(110)
    assert "WarmedUp" not in sim.reasons()
    sim.run(10)
    assert "WarmedUp" in sim.reasons()

    off = Sim(make_spec(steps=[{"weight": 10}], analysis={"warmup": "0s"}))
    off.tick()
    off.tick(advance=10)
    off.run(60)
    assert "WarmedUp" not in off.reasons()
    assert off.status.passed_intervals == 1


def test_later_steps_have_no_warm_up() -> None:
    sim = Sim(make_spec(steps=[{"weight": 10}, {"weight": 50}], analysis={"warmup": "1m"}))
    sim.until("Progressing")
    while sim.status.step == 0:
        sim.tick(advance=10)
    sim.tick(advance=10)  # step 2 starts
    sim.run(60)
    assert sim.status.passed_intervals == 1
    assert sim.reasons().count("WarmedUp") == 1


def _waiting(at: str, step: int | None) -> AnalysisRecord:
    return AnalysisRecord(
        at=at,
        step=step,
        window="1m",
        verdict="inconclusive",
        checks=[
            CheckResult(
                name="error-rate",
                verdict="inconclusive",
                needed_samples=1234,
                planned_samples=2400,
                message="waiting for evidence: 1234 more candidate requests needed at this rate",
            )
        ],
    )


def test_a_step_waiting_for_evidence_holds_says_why_and_fails_at_the_deadline() -> None:
    spec = make_spec(steps=[{"weight": 10}], analysis={"inconclusiveDeadline": "5m"})
    status = ModelDeploymentStatus()
    route: dict[str, int] | None = None
    now = T0
    messages: list[str] = []
    for _ in range(60):
        window = analysis_due(spec, status, now)
        rec = None if window is None else _waiting(format_time(window.end), window.step)
        d = reconcile(
            spec, status, Observations(weights=route, candidate_ready=True, analysis=rec), now
        )
        status, route = d.status, dict(d.weights)
        messages.append(status.message)
        if status.phase == "Failed":
            break
        now += timedelta(seconds=10)
    assert status.phase == "Failed"
    assert any(
        "waiting for evidence (error-rate): 1234 more candidate requests needed at this rate" in m
        and "inconclusiveDeadline in" in m
        for m in messages
    )
    assert "InconclusiveDeadline" in status.message
    assert "waiting for evidence (error-rate): 1234 more candidate requests" in status.message
    assert status.passed_intervals == 0
