"""Properties of the rollout engine over random sequences of ticks, verdicts, route lag,
readiness changes and manual requests."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from modelpilot_operator.api.v1alpha1.status import Action, Verdict
from modelpilot_operator.rollout import required_passes, step_count
from tests.unit.rollout.harness import Sim, make_spec, revision


@dataclass(frozen=True)
class Move:
    advance: float
    verdict: Verdict | None
    route_applies: bool
    candidate_ready: bool
    action: Action | None
    right_revision: bool
    full: bool


moves = st.builds(
    Move,
    advance=st.sampled_from([0.0, 5.0, 10.0, 30.0, 60.0, 120.0]),
    verdict=st.sampled_from(["pass", "pass", "pass", "fail", "inconclusive", None]),
    route_applies=st.sampled_from([True, True, True, False]),
    candidate_ready=st.sampled_from([True, True, True, False]),
    action=st.none()
    | st.none()
    | st.none()
    | st.sampled_from(["promote", "abort", "retry", "pause", "resume", "rollback"]),
    right_revision=st.booleans(),
    full=st.booleans(),
)

specs = st.sampled_from(
    [
        {"steps": [{"weight": 10}, {"weight": 25}, {"weight": 50}]},
        {"steps": [{"weight": 5, "pause": "2m"}, {"weight": 100}]},
        {"steps": [{"weight": 20}], "promotion": "manual"},
        {"strategy": "abTest", "match": [{"cookie": "beta", "exact": "1"}], "iterations": 2},
        {"strategy": "shadow", "mirrorPercent": 30, "iterations": 2},
        {"strategy": "blueGreen", "iterations": 3, "promotion": "manual"},
    ]
)


def _drive(rollout: dict[str, object], plan: list[Move], with_actions: bool) -> None:
    spec = make_spec(analysis={"failureLimit": 1, "inconclusiveDeadline": "3m"}, **rollout)
    ro = spec.rollout
    assert ro is not None
    sim = Sim(spec)
    passes_per_step: dict[int, int] = {}
    for m in plan:
        sim.apply_route = m.route_applies
        sim.candidate_ready = m.candidate_ready
        before = sim.status
        if with_actions and m.action is not None:
            rev = revision(spec) if m.right_revision else "ffffffffff"
            sim.request(m.action, revision=rev, full=m.full)
        d = sim.tick(m.verdict, advance=m.advance)
        after = d.status

        # Weights always sum to 100 and stay within 0..100.
        assert sum(d.weights.values()) == 100
        assert all(0 <= w <= 100 for w in d.weights.values())
        assert 0 <= d.mirror_percent <= 100
        assert after.desired_weights == d.weights

        # A failed candidate never keeps traffic.
        if after.phase in ("RolledBack", "Failed"):
            assert d.weights.get("v2", 0) == 0
            assert d.mirror_percent == 0

        # Count accepted passing intervals per step (a new record at the same step).
        # Count accepted passing intervals per step (the record names its step; the step
        # may advance in the same tick).
        if (
            after.last_analysis_at != before.last_analysis_at
            and after.analysis
            and after.analysis[-1].verdict == "pass"
        ):
            step = after.analysis[-1].step or 0
            passes_per_step[step] = passes_per_step.get(step, 0) + 1
        restarted = after.phase == "Progressing" and after.step == 0
        if restarted and before.phase in ("RolledBack", "Failed", "Pending"):
            passes_per_step = {}

        # No promotion without the required passing intervals (unless a person promoted).
        if not with_actions and after.phase in ("Promoting", "Promoted"):
            for step in range(step_count(ro)):
                assert passes_per_step.get(step, 0) >= required_passes(ro, step)


@settings(max_examples=150, deadline=None)
@given(rollout=specs, plan=st.lists(moves, min_size=1, max_size=80))
def test_invariants_without_people(rollout: dict[str, object], plan: list[Move]) -> None:
    _drive(rollout, plan, with_actions=False)


@settings(max_examples=150, deadline=None)
@given(rollout=specs, plan=st.lists(moves, min_size=1, max_size=80))
def test_invariants_with_people(rollout: dict[str, object], plan: list[Move]) -> None:
    _drive(rollout, plan, with_actions=True)


@settings(max_examples=100, deadline=None)
@given(rollout=specs, plan=st.lists(moves, min_size=1, max_size=60))
def test_a_rolled_back_candidate_gets_no_traffic_until_a_retry_or_a_new_revision(
    rollout: dict[str, object], plan: list[Move]
) -> None:
    spec = make_spec(analysis={"failureLimit": 0}, **rollout)
    sim = Sim(spec)
    sim.until("RolledBack", verdict="fail")
    for m in plan:
        sim.apply_route = m.route_applies
        sim.candidate_ready = m.candidate_ready
        if m.action is not None and m.action != "retry":
            sim.request(m.action, revision=revision(spec), full=m.full)
        d = sim.tick(m.verdict, advance=m.advance)
        assert d.status.phase == "RolledBack"
        assert d.weights.get("v2", 0) == 0
        assert d.mirror_percent == 0
