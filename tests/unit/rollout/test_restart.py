"""An operator restarted in any phase continues exactly where it was.

Status is the only state: a fresh call with the stored status (round-tripped through its wire
form) and the route read back gives the same decision as an operator that never stopped.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from modelpilot_operator.api.v1alpha1 import ModelDeploymentStatus
from modelpilot_operator.rollout import Observations, reconcile
from tests.unit.rollout.harness import Sim, make_spec, revision

PHASES = [
    "Progressing",
    "Paused",
    "AwaitingPromotion",
    "Promoting",
    "Promoted",
    "RolledBack",
    "Failed",
    "Stable",
]


def _reach(phase: str) -> Sim:
    if phase == "Stable":
        sim = Sim(make_spec(candidate=None))
        sim.tick()
        return sim
    sim = Sim(
        make_spec(promotion="manual", analysis={"failureLimit": 0, "inconclusiveDeadline": "2m"})
    )
    if phase == "Failed":
        sim.until("Failed", verdict="inconclusive")
    elif phase == "RolledBack":
        sim.until("RolledBack", verdict="fail")
    else:
        sim.until("AwaitingPromotion")
        if phase == "Paused":
            sim.request("pause")
        elif phase == "Progressing":
            sim.request("resume")  # ignored; then move back to a running step
            sim = Sim(make_spec(promotion="manual"))
            sim.tick()
            sim.run(70)
        elif phase in ("Promoting", "Promoted"):
            sim.apply_route = phase == "Promoted"
            sim.request("promote", revision=revision(sim.spec))
            if phase == "Promoted":
                sim.until("Promoted")
    assert sim.phase() == phase
    return sim


@pytest.mark.parametrize("phase", PHASES)
def test_restart_in_every_phase_gives_the_same_decision(phase: str) -> None:
    sim = _reach(phase)
    stored = ModelDeploymentStatus.model_validate(sim.status.to_wire())
    obs = Observations(weights=sim.route, mirror_percent=sim.mirror, candidate_ready=True)
    for later in (0, 5, 61, 3600):
        now = sim.now + timedelta(seconds=later)
        a = reconcile(sim.spec, sim.status, obs, now)
        b = reconcile(sim.spec, stored, obs, now)
        assert a == b
        assert b.status.phase == phase or later > 0


@pytest.mark.parametrize("phase", ["Progressing", "AwaitingPromotion", "Promoting"])
def test_restart_mid_rollout_finishes_the_rollout(phase: str) -> None:
    sim = _reach(phase)
    sim.apply_route = True
    sim.status = ModelDeploymentStatus.model_validate(sim.status.to_wire())
    if phase != "Promoting":
        sim.until("AwaitingPromotion")
        sim.request("promote", revision=revision(sim.spec))
    sim.until("Promoted")
    assert sim.route == {"v1": 0, "v2": 100}


def test_restart_with_the_route_behind_the_status_reapplies_the_weights() -> None:
    sim = Sim(make_spec())
    sim.tick()
    sim.run(70)
    assert sim.status.step == 1
    sim.route = {"v1": 90, "v2": 10}  # the last apply was lost in the crash
    d = sim.tick(advance=10)
    assert d.weights == {"v1": 75, "v2": 25}
    assert sim.status.step == 1
