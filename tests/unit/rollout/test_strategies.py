"""abTest, shadow and blueGreen: what the route carries and when they promote."""

from __future__ import annotations

from tests.unit.rollout.harness import Sim, make_spec

MATCH = [{"header": "x-canary", "exact": "1"}]


def test_ab_test_keeps_stable_weights_and_promotes_after_iterations() -> None:
    sim = Sim(make_spec(strategy="abTest", match=MATCH, iterations=3))
    d = sim.tick()
    assert d.weights == {"v1": 100, "v2": 0}
    assert d.mirror_percent == 0
    sim.tick(advance=10)
    assert sim.status.step_started_at is not None
    sim.run(170)
    assert sim.phase() == "Progressing"
    assert sim.status.passed_intervals == 2
    sim.run(20)
    assert sim.phase() in ("Promoting", "Promoted")
    sim.until("Promoted")
    assert sim.route == {"v1": 0, "v2": 100}


def test_ab_test_failure_rolls_back() -> None:
    sim = Sim(make_spec(strategy="abTest", match=MATCH, analysis={"failureLimit": 0}))
    sim.until("RolledBack", verdict="fail")
    assert sim.route == {"v1": 100, "v2": 0}


def test_shadow_mirrors_then_promotes() -> None:
    sim = Sim(make_spec(strategy="shadow", mirrorPercent=40, iterations=2))
    d = sim.tick()
    assert d.weights == {"v1": 100, "v2": 0}
    assert d.mirror_percent == 40
    sim.until("Promoted")
    assert sim.route == {"v1": 0, "v2": 100}
    assert sim.mirror == 0


def test_shadow_step_waits_for_the_mirror_to_be_read_back() -> None:
    sim = Sim(make_spec(strategy="shadow", mirrorPercent=40))
    sim.apply_route = False
    sim.route = {"v1": 100}
    sim.mirror = 0
    sim.tick()
    sim.run(300)
    assert sim.status.step_started_at is None
    sim.mirror = 40
    sim.tick(advance=10)
    assert sim.status.step_started_at is not None


def test_shadow_step_does_not_start_while_the_gateway_cannot_mirror() -> None:
    sim = Sim(make_spec(strategy="shadow", iterations=1))
    sim.apply_route = False
    sim.route = {"v1": 100}
    sim.mirror = 0
    sim.mirror_blocked = "GatewayClass edge does not list HTTPRouteRequestMirror"
    sim.run(600)
    assert sim.phase() == "Progressing"
    assert sim.status.step_started_at is None
    assert "GatewayClass edge" in sim.status.message
    assert "Promoted" not in sim.reasons()


def test_shadow_step_started_is_held_once_the_mirror_is_off_the_route() -> None:
    sim = Sim(make_spec(strategy="shadow", iterations=1))
    sim.tick()
    sim.tick(advance=10)
    assert sim.status.step_started_at is not None
    # The Gateway changed to one that cannot mirror: the reconciler took the mirror off.
    sim.apply_route = False
    sim.mirror = 0
    sim.mirror_blocked = "GatewayClass edge does not list HTTPRouteRequestMirror"
    sim.run(600)
    assert sim.phase() == "Progressing"
    assert "held: GatewayClass edge" in sim.status.message
    assert "Promoted" not in sim.reasons()
    assert sim.phase() != "Promoting"
    # Back on a Gateway that mirrors, it goes on.
    sim.mirror_blocked = None
    sim.apply_route = True
    sim.mirror = 100
    sim.until("Promoted")


def test_shadow_rolled_back_stops_mirroring() -> None:
    sim = Sim(make_spec(strategy="shadow", analysis={"failureLimit": 0}))
    sim.until("RolledBack", verdict="fail")
    assert sim.mirror == 0
    assert sim.route == {"v1": 100, "v2": 0}


def test_blue_green_waits_for_the_full_candidate_then_switches_at_once() -> None:
    sim = Sim(make_spec(strategy="blueGreen", iterations=2))
    sim.candidate_ready = False
    sim.tick()
    sim.run(600)
    assert sim.status.step_started_at is None
    assert sim.route == {"v1": 100, "v2": 0}
    sim.candidate_ready = True
    routes = []
    while sim.phase() != "Promoted":
        sim.tick(advance=10)
        routes.append(dict(sim.route or {}))
    assert {"v1": 0, "v2": 100} in routes
    assert all(r in ({"v1": 100, "v2": 0}, {"v1": 0, "v2": 100}) for r in routes)


def test_blue_green_manual_gate() -> None:
    sim = Sim(make_spec(strategy="blueGreen", iterations=1, promotion="manual"))
    sim.until("AwaitingPromotion")
    assert sim.route == {"v1": 100, "v2": 0}
