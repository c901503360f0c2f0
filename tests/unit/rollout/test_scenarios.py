"""The rollout engine driven tick by tick, one scenario per test."""

from __future__ import annotations

from datetime import timedelta

import pytest

from modelpilot_operator.api.v1alpha1 import ModelDeploymentStatus
from modelpilot_operator.rollout import Observations, analysis_due, reconcile
from tests.unit.rollout.harness import T0, Sim, make_spec, record, revision

STEPS = [{"weight": 10}, {"weight": 25}, {"weight": 50}]


def canary(**kw: object) -> Sim:
    return Sim(make_spec(steps=STEPS, **kw))


def test_no_rollout_is_stable_with_all_traffic_on_stable() -> None:
    sim = Sim(make_spec(candidate=None))
    d = sim.tick()
    assert sim.phase() == "Stable"
    assert d.weights == {"v1": 100}
    assert sim.condition("Progressing") == "False"


def test_happy_path_walks_every_step_then_promotes() -> None:
    sim = canary()
    sim.tick()
    assert sim.phase() == "Progressing"
    assert sim.status.candidate_revision == revision(sim.spec)
    seen: list[dict[str, int]] = []
    for _ in range(100):
        sim.tick(advance=10)
        if sim.route not in seen:
            seen.append(dict(sim.route or {}))
        if sim.status.phase == "Promoted":
            break
    assert seen == [
        {"v1": 90, "v2": 10},
        {"v1": 75, "v2": 25},
        {"v1": 50, "v2": 50},
        {"v1": 0, "v2": 100},
    ]
    assert sim.phase() == "Promoted"
    assert sim.status.stable == "v2"
    assert sim.condition("Promoted") == "True"
    assert sim.condition("Progressing") == "False"
    assert sim.reasons().count("StepPassed") == 3
    assert sim.reasons()[-1] == "Promoted"


def test_a_step_counts_only_once_the_route_reads_back_its_weights() -> None:
    sim = canary()
    sim.apply_route = False
    sim.route = {"v1": 100}
    sim.tick()
    sim.run(600)
    assert sim.status.step == 0
    assert sim.status.step_started_at is None
    assert analysis_due(sim.spec, sim.status, sim.now) is None
    assert "waiting for the route" in sim.status.message
    sim.route = {"v1": 90, "v2": 10}
    sim.tick(advance=10)
    assert sim.status.step_started_at is not None
    sim.apply_route = True
    sim.run(60)
    assert sim.status.step == 1


def test_the_candidate_gets_no_traffic_before_it_is_ready() -> None:
    sim = canary()
    sim.candidate_ready = False
    d = sim.tick()
    sim.run(120)
    assert sim.last is not None
    assert sim.last.weights == {"v1": 100, "v2": 0}
    assert d.status.step_started_at is None
    assert "ready" in sim.status.message
    sim.candidate_ready = True
    sim.tick(advance=10)
    assert sim.route == {"v1": 90, "v2": 10}


def test_a_step_needs_its_pause_in_passing_intervals() -> None:
    sim = Sim(make_spec(steps=[{"weight": 10, "pause": "3m"}, {"weight": 50}]))
    sim.tick()
    sim.tick(advance=10)  # step 1 starts
    sim.run(170)
    assert sim.status.step == 0
    assert sim.status.passed_intervals == 2
    sim.run(20)
    assert sim.status.step == 1


@pytest.mark.parametrize("failing_step", [0, 1, 2])
def test_failure_at_each_step_rolls_back(failing_step: int) -> None:
    sim = canary(analysis={"failureLimit": 1})
    sim.tick()
    while sim.status.step != failing_step or sim.status.step_started_at is None:
        sim.tick(advance=10)
    n = 0
    while sim.phase() == "Progressing":
        sim.tick("fail", advance=10)
        n += 1
    assert sim.phase() == "RolledBack"
    assert sim.status.failed_intervals == 2
    assert sim.route == {"v1": 100, "v2": 0}
    assert sim.condition("RolledBack") == "True"
    assert sim.condition("Promoted") == "False"
    assert "failureLimit 1" in sim.status.message
    # It stays rolled back: no traffic for the same revision until a retry.
    sim.run(600)
    assert sim.phase() == "RolledBack"
    assert sim.route == {"v1": 100, "v2": 0}


def test_failures_within_the_limit_do_not_roll_back() -> None:
    sim = canary(analysis={"failureLimit": 2})
    sim.tick()
    sim.tick(advance=10)
    sim.tick("fail", advance=60)
    sim.tick("fail", advance=60)
    assert sim.phase() == "Progressing"
    assert sim.status.failed_intervals == 2
    sim.until("Promoted")


def test_inconclusive_intervals_neither_pass_nor_fail() -> None:
    sim = canary(analysis={"inconclusiveDeadline": "10m"})
    sim.tick()
    sim.tick(advance=10)
    sim.run(300, verdict="inconclusive")
    assert sim.phase() == "Progressing"
    assert sim.status.step == 0
    assert sim.status.passed_intervals == 0
    assert sim.status.failed_intervals == 0
    assert sim.status.inconclusive_since is not None
    sim.run(60)
    assert sim.status.inconclusive_since is None
    assert sim.status.step == 1


def test_starvation_past_the_inconclusive_deadline_fails_the_rollout() -> None:
    sim = canary(analysis={"inconclusiveDeadline": "5m"})
    sim.tick()
    sim.tick(advance=10)
    started = sim.now
    sim.until("Failed", verdict="inconclusive")
    waited = (sim.now - started).total_seconds()
    assert 300 <= waited <= 310
    assert sim.route == {"v1": 100, "v2": 0}
    assert "inconclusiveDeadline" in sim.status.message
    assert sim.reasons()[-1] == "InconclusiveDeadline"
    assert sim.condition("RolledBack") == "True"


def test_manual_gate_waits_for_an_approval_naming_the_candidate_revision() -> None:
    sim = canary(promotion="manual")
    sim.until("AwaitingPromotion")
    sim.run(3600)
    assert sim.phase() == "AwaitingPromotion"
    assert sim.route == {"v1": 50, "v2": 50}
    sim.request("promote", revision="0000000000")
    assert sim.phase() == "AwaitingPromotion"
    assert sim.reasons()[-1] == "ApprovalRevisionMismatch"
    sim.request("promote", revision=None)
    assert sim.phase() == "AwaitingPromotion"
    sim.request("promote", revision=revision(sim.spec))
    assert sim.phase() == "Promoting"
    sim.until("Promoted")
    assert sim.condition("Promoted") == "True"


def test_a_failure_while_awaiting_promotion_still_rolls_back() -> None:
    sim = canary(promotion="manual", analysis={"failureLimit": 0})
    sim.until("AwaitingPromotion")
    sim.until("RolledBack", verdict="fail")
    assert sim.route == {"v1": 100, "v2": 0}


def test_a_request_is_acted_on_once() -> None:
    sim = canary(promotion="manual")
    sim.until("AwaitingPromotion")
    sim.request("pause")
    assert sim.phase() == "Paused"
    sim.tick(advance=10)  # same request still in status
    sim.request("resume")
    sim.tick(advance=10)
    assert sim.phase() == "AwaitingPromotion"
    assert sim.reasons().count("Paused") == 1


def test_promote_skips_a_step_and_full_promotes_at_once() -> None:
    sim = canary()
    sim.tick()
    sim.tick(advance=10)
    sim.request("promote", revision=revision(sim.spec))
    assert sim.status.step == 1
    assert "StepSkipped" in sim.reasons()
    sim.request("promote", revision=revision(sim.spec), full=True)
    assert sim.phase() == "Promoting"
    sim.until("Promoted")


@pytest.mark.parametrize("action", ["abort", "rollback"])
def test_abort_and_rollback_send_everything_back_to_stable_at_once(action: str) -> None:
    sim = canary()
    sim.tick()
    sim.run(70)
    assert sim.status.step == 1
    d = sim.request(action)  # type: ignore[arg-type]
    assert d.weights == {"v1": 100, "v2": 0}
    assert sim.phase() == "RolledBack"
    assert sim.condition("RolledBack") == "True"


def test_rollback_after_promotion_returns_to_the_previous_stable() -> None:
    sim = canary()
    sim.until("Promoted")
    d = sim.request("rollback")
    assert sim.phase() == "RolledBack"
    assert sim.status.stable == "v1"
    assert d.weights == {"v1": 100, "v2": 0}


def test_abort_outside_a_rollout_is_ignored_with_an_event() -> None:
    sim = canary()
    sim.until("Promoted")
    sim.request("abort")
    assert sim.phase() == "Promoted"
    assert sim.reasons()[-1] == "RequestIgnored"


def test_retry_starts_over_after_a_rollback() -> None:
    sim = canary(analysis={"failureLimit": 0})
    sim.tick()
    sim.until("RolledBack", verdict="fail")
    sim.request("retry")
    assert sim.phase() == "Progressing"
    assert sim.status.step == 0
    assert sim.status.failed_intervals == 0
    assert sim.status.analysis == []
    assert sim.condition("RolledBack") == "False"
    sim.until("Promoted")


def test_retry_while_progressing_is_ignored() -> None:
    sim = canary()
    sim.tick()
    sim.request("retry")
    assert "RequestIgnored" in sim.reasons()
    assert sim.phase() == "Progressing"


def test_pause_freezes_weights_and_analysis_and_resume_continues() -> None:
    sim = canary()
    sim.tick()
    sim.tick(advance=10)
    sim.request("pause")
    assert sim.phase() == "Paused"
    sim.run(3600)
    assert sim.phase() == "Paused"
    assert sim.status.step == 0
    assert sim.route == {"v1": 90, "v2": 10}
    assert analysis_due(sim.spec, sim.status, sim.now) is None
    sim.request("resume")
    assert sim.phase() == "Progressing"
    # The first interval after the resume starts at the resume.
    assert analysis_due(sim.spec, sim.status, sim.now) is None
    sim.run(60)
    assert sim.status.step == 1


def test_a_new_candidate_revision_mid_rollout_starts_over() -> None:
    sim = canary()
    sim.tick()
    while sim.status.step != 2:
        sim.tick(advance=10)
    old = sim.status.candidate_revision
    obj = sim.spec.model_dump(by_alias=True)
    obj["versions"][1]["model"]["storageUri"] = "s3://m/2b/"
    sim.spec = type(sim.spec).model_validate(obj)
    d = sim.tick(advance=10)
    assert sim.status.candidate_revision != old
    assert sim.status.step == 0
    assert sim.status.step_started_at is None
    assert d.weights == {"v1": 90, "v2": 10}
    assert "RolloutRestarted" in sim.reasons()
    sim.until("Promoted")


def test_an_approval_for_the_old_revision_does_not_promote_the_new_one() -> None:
    sim = canary(promotion="manual")
    sim.until("AwaitingPromotion")
    old = revision(sim.spec)
    obj = sim.spec.model_dump(by_alias=True)
    obj["versions"][1]["runtime"]["batching"]["maxBatchSize"] = 4
    sim.spec = type(sim.spec).model_validate(obj)
    sim.tick(advance=10)
    sim.until("AwaitingPromotion")
    sim.request("promote", revision=old)
    assert sim.phase() == "AwaitingPromotion"
    sim.request("promote", revision=revision(sim.spec))
    assert sim.phase() == "Promoting"


def test_another_candidate_after_a_promotion_starts_a_new_rollout() -> None:
    sim = canary()
    sim.until("Promoted")
    obj = sim.spec.model_dump(by_alias=True)
    obj["stable"] = "v2"
    obj["rollout"]["candidate"] = "v3"
    sim.spec = type(sim.spec).model_validate(obj)
    sim.tick(advance=10)
    assert sim.phase() == "Progressing"
    assert sim.status.stable == "v2"
    assert sim.condition("Promoted") == "False"
    sim.until("Promoted")
    assert sim.route == {"v2": 0, "v3": 100}


def test_removing_the_rollout_mid_way_returns_to_stable() -> None:
    sim = canary()
    sim.tick()
    sim.run(70)
    sim.spec = make_spec(candidate=None)
    d = sim.tick(advance=10)
    assert sim.phase() == "Stable"
    assert d.weights == {"v1": 100}
    assert "RolloutRemoved" in sim.reasons()


def test_a_stale_or_early_analysis_record_is_ignored() -> None:
    spec = make_spec(steps=STEPS)
    status = ModelDeploymentStatus()
    obs = Observations(weights={"v1": 100}, candidate_ready=True)
    status = reconcile(spec, status, obs, T0).status
    on_route = Observations(weights={"v1": 90, "v2": 10}, candidate_ready=True)
    status = reconcile(spec, status, on_route, T0).status
    assert status.step_started_at is not None

    early = record(T0 + timedelta(seconds=30), 0, "fail")
    d = reconcile(
        spec,
        status,
        Observations(weights={"v1": 90, "v2": 10}, candidate_ready=True, analysis=early),
        T0 + timedelta(seconds=30),
    )
    assert d.status.failed_intervals == 0
    wrong_step = record(T0 + timedelta(seconds=60), 1, "fail")
    d = reconcile(
        spec,
        status,
        Observations(weights={"v1": 90, "v2": 10}, candidate_ready=True, analysis=wrong_step),
        T0 + timedelta(seconds=60),
    )
    assert d.status.failed_intervals == 0


def test_history_is_bounded_and_every_interval_is_an_event() -> None:
    sim = Sim(make_spec(steps=[{"weight": 10, "pause": "30m"}]))
    sim.tick()
    sim.run(1900)
    assert len(sim.status.analysis) == 20
    assert sim.reasons().count("AnalysisPassed") >= 30
