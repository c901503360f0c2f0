"""Rollouts through a real Gateway API data plane: router ``gatewayApi``, Traefik enforcing
the HTTPRoute the operator writes.

Nothing here picks a version for a request: :class:`e2e.traffic.GatewayDriver` sends every
request to the cluster's Gateway (Traefik on 127.0.0.1) with the ModelDeployment's host,
and records the version that answered, as the runtime names it. The split is then
measured per run of route weights (:func:`e2e.traffic.shares_per_step`) and each version's
observed share must lie within a binomial band of its weight.

Each scenario reads Given / When / Then; waits have generous timeouts that only keep a
broken cluster from hanging the run.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.cluster import GATEWAY_CONTROLLER, gateway_host, gateway_routing
from e2e.kube import wait_for
from e2e.operator_process import OperatorProcess
from e2e.traffic import GatewayDriver, StepShare, answered_by, infer_body, shares_per_step
from modelpilot_operator.k8s.kinds import HTTP_ROUTE

from .conftest import Rollout, analysis, version
from .test_rollout import ERROR_RATE, LATENCY, assert_rolled_back_by, canary, modelpilot

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

RATE = 25.0
# Runs of weights with fewer measured requests than this are reported, not judged.
MIN_REQUESTS = 30


@pytest.fixture
def gw_rollout(rollout: Rollout, gateway: str) -> Rollout:
    """The rollout helper with router gatewayApi on the cluster's Gateway."""
    rollout.routing = gateway_routing(rollout.name, rollout.namespace)
    return rollout


def gateway_driver(rollout: Rollout) -> GatewayDriver:
    assert isinstance(rollout.driver, GatewayDriver)
    return rollout.driver


def route_accepted_by_traefik(rollout: Rollout) -> dict[str, Any] | None:
    """The HTTPRoute's parent status once Traefik accepted it and resolved its backends."""
    route = rollout.api.get(HTTP_ROUTE, rollout.namespace, rollout.name) or {}
    for parent in (route.get("status") or {}).get("parents") or []:
        if parent.get("controllerName") != GATEWAY_CONTROLLER:
            continue
        conds = {c["type"]: c["status"] for c in parent.get("conditions") or []}
        if conds.get("Accepted") == "True" and conds.get("ResolvedRefs") == "True":
            return dict(parent)
    return None


def given_stable_v1_behind_the_gateway(rollout: Rollout, models: dict[str, Path]) -> None:
    """v1 alone, Ready, its HTTPRoute accepted by Traefik, traffic flowing through it."""
    rollout.apply({"versions": [version("v1", models["v1"])], "stable": "v1"})
    rollout.wait_versions_ready("v1")
    rollout.wait_phase("Stable")
    wait_for("Traefik to accept the HTTPRoute", lambda: route_accepted_by_traefik(rollout), 60)
    driver = rollout.start_traffic(rate=RATE)
    assert isinstance(driver, GatewayDriver)
    started = time.time()
    wait_answers(driver, "v1 to answer through the gateway", started, 20, version="v1")


def wait_answers(
    driver: GatewayDriver, what: str, after: float, count: int, version: str | None = None
) -> None:
    def enough() -> bool:
        sent, _ = driver.recording.snapshot()
        return (
            sum(1 for s in sent if s.at > after and s.version and version in (None, s.version))
            >= count
        )

    wait_for(what, enough, timeout=120, interval=0.5)


def wait_route_read(driver: GatewayDriver, candidate: str, weight: int) -> float:
    """When the driver first read the route with ``candidate`` at ``weight`` for good
    (after its last read of another weight)."""

    def seen() -> float | None:
        _, reads = driver.recording.snapshot()
        other = [t for t, w in reads if w.get(candidate, 0) != weight]
        last_other = max(other) if other else float("-inf")
        return next((t for t, w in reads if t > last_other and w.get(candidate, 0) == weight), None)

    at: float = wait_for(f"the route to read {candidate} at {weight}%", seen, 60, 0.5)
    return at


def measured(driver: GatewayDriver) -> list[StepShare]:
    sent, reads = driver.recording.snapshot()
    shares = shares_per_step(sent, reads)
    for s in shares:
        print(f"observed split while the route said {s.weights}: {s.describe()}")
    unnamed = Counter((s.code, s.matched) for s in sent if not s.version)
    if unnamed:
        t0 = sent[0].at if sent else 0.0
        print(f"answers that named no version (code, matched): {dict(unnamed)}")
        print("  at " + ", ".join(f"{s.at - t0:.1f}s" for s in sent if not s.version))
    return shares


def assert_split_within_tolerance(
    shares: list[StepShare], candidate: str, expected: set[int]
) -> None:
    """Every run with enough requests is within the binomial band, and each weight in
    ``expected`` (the candidate's) was measured."""
    judged = [s for s in shares if s.n >= MIN_REQUESTS]
    for s in judged:
        assert s.within(), f"split outside tolerance: {s.weights}: {s.describe()}"
    seen = {s.weights.get(candidate, 0) for s in judged}
    assert expected <= seen, [(s.weights, s.n) for s in shares]


# --- 1 ------------------------------------------------------------------------------------


def test_canary_through_traefik_gets_the_share_of_each_step_and_is_promoted(
    gw_rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    rollout = gw_rollout
    # Given v1 serving behind the Gateway,
    given_stable_v1_behind_the_gateway(rollout, models)
    # When v2, as good as v1, is rolled out as a canary in three steps,
    steps = [20, 50, 80]
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), version("v2", models["v2"])],
            "stable": "v1",
            "rollout": canary("v2", steps, ERROR_RATE, LATENCY),
        }
    )
    # Then it is promoted,
    status = rollout.wait_phase("Promoted", "RolledBack", "Failed")
    assert status["phase"] == "Promoted", rollout.explain(operator)
    assert status["weights"].get("v2") == 100
    assert {r["step"] for r in status["analysis"] if r["verdict"] == "pass"} == {0, 1, 2}
    # and Traefik sends it all the traffic once the route says so.
    driver = gateway_driver(rollout)
    promoted_at = wait_route_read(driver, "v2", 100)
    wait_answers(driver, "answers after the promotion", promoted_at + 3, 60)
    driver.stop()
    # At every step, each version answered its weight's share of the requests, within
    # the binomial tolerance: before the rollout, at 20, 50 and 80%, and after it.
    shares = measured(driver)
    assert_split_within_tolerance(shares, "v2", {0, *steps, 100})
    sent, _ = driver.recording.snapshot()
    assert all(s.code == 200 for s in sent if s.version), "a version failed a request"


# --- 2 ------------------------------------------------------------------------------------


def test_canary_with_injected_errors_through_traefik_is_rolled_back(
    gw_rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    rollout = gw_rollout
    # Given v1 serving behind the Gateway,
    given_stable_v1_behind_the_gateway(rollout, models)
    # When v2, whose runtime fails 30% of its requests, is rolled out at 50%,
    bad = version("v2", models["v2"], faults={"MODELPILOT_FAULT_ERROR_RATIO": "0.3"})
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), bad],
            "stable": "v1",
            "rollout": canary("v2", [50], ERROR_RATE, failure_limit=1),
        }
    )
    # Then the error-rate check rolls it back,
    assert_rolled_back_by(rollout, operator, {"error-rate"}, failure_limit=1)
    driver = gateway_driver(rollout)
    rolled_back_at = wait_route_read(driver, "v2", 0)
    wait_answers(driver, "answers after the rollback", rolled_back_at + 3, 60)
    driver.stop()
    # the clients saw v2's failures through the gateway (the runtime names the version
    # that failed), and none from v1,
    sent, _ = driver.recording.snapshot()
    assert any(s.version == "v2" and s.code == 500 for s in sent)
    assert all(s.code == 200 for s in sent if s.version == "v1")
    # and the split, failures included, followed the route: half each while it said 50%,
    # nothing to v2 once it was rolled back.
    shares = measured(driver)
    assert_split_within_tolerance(shares, "v2", {0, 50})
    assert shares[-1].weights.get("v2", 0) == 0
    assert shares[-1].n >= MIN_REQUESTS
    assert shares[-1].counts.get("v2", 0) == 0


# --- 3 ------------------------------------------------------------------------------------


def probe(host: str, url: str, name: str, headers: dict[str, str], count: int = 20) -> set[str]:
    """The versions that answered ``count`` requests with ``headers`` through the gateway."""
    answered = set()
    with httpx.Client(timeout=5) as client:
        for i in range(count):
            resp = client.post(
                f"{url}/v2/models/{name}/infer",
                json=infer_body([i / count] * 8),
                headers={"host": host, **headers},
            )
            answered.add(answered_by(resp.content) or f"HTTP {resp.status_code}")
    return answered


def test_ab_test_through_traefik_sends_header_and_cookie_users_to_the_candidate(
    gw_rollout: Rollout, operator: OperatorProcess, models: dict[str, Path], gateway: str
) -> None:
    rollout = gw_rollout
    # Given v1 serving behind the Gateway,
    given_stable_v1_behind_the_gateway(rollout, models)
    # When v2 is A/B tested on a header or a cookie, promoted by hand,
    spec = {
        "candidate": "v2",
        "strategy": "abTest",
        "match": [
            {"header": "x-model-group", "exact": "beta"},
            {"cookie": "modelgroup", "exact": "beta"},
        ],
        "iterations": 2,
        "analysis": analysis(ERROR_RATE),
        "promotion": "manual",
    }
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), version("v2", models["v2"])],
            "stable": "v1",
            "rollout": spec,
        }
    )
    # Then its iterations pass on the matched users' requests, and it waits for a person,
    status = rollout.wait_phase("AwaitingPromotion", "Promoted", "RolledBack", "Failed")
    assert status["phase"] == "AwaitingPromotion", rollout.explain(operator)
    route = rollout.api.get(HTTP_ROUTE, rollout.namespace, rollout.name) or {}
    assert "ab-test" in {r.get("name") for r in route["spec"]["rules"]}
    assert route_accepted_by_traefik(rollout)
    # with Traefik sending users with the header, or the cookie among other cookies, to
    # v2 and everyone else to v1.
    host = gateway_host(rollout.name, rollout.namespace)

    def routed(headers: dict[str, str]) -> set[str]:
        return probe(host, gateway, rollout.name, headers)

    assert routed({"x-model-group": "beta"}) == {"v2"}
    assert routed({"cookie": "theme=dark; modelgroup=beta; lang=en"}) == {"v2"}
    assert routed({"x-model-group": "alpha"}) == {"v1"}
    assert routed({"cookie": "modelgroup=betamax"}) == {"v1"}
    assert routed({}) == {"v1"}

    # When someone approves it,
    done = modelpilot("promote", rollout.name, "-n", rollout.namespace)
    assert done.returncode == 0, done.stderr
    # Then it is promoted, and everyone gets v2.
    status = rollout.wait_phase("Promoted", "RolledBack", "Failed")
    assert status["phase"] == "Promoted", rollout.explain(operator)
    driver = gateway_driver(rollout)
    promoted_at = wait_route_read(driver, "v2", 100)
    wait_answers(driver, "answers after the promotion", promoted_at + 3, 60)
    assert probe(host, gateway, rollout.name, {}) == {"v2"}
    driver.stop()
    # The driver's users: those with the header (a share of them, once the rule was on the
    # route and Traefik had it) always got an answer from v2; the others got v1 until the
    # promotion. (The rule waits for v2 to be ready: before, they would have got 503.)
    measured(driver)
    sent, _ = driver.recording.snapshot()
    first_matched = min(s.at for s in sent if s.matched)
    during = [s for s in sent if first_matched + 2 <= s.at <= promoted_at - 1]
    assert {s.version for s in during if s.matched} == {"v2"}
    assert {s.version for s in during if not s.matched} == {"v1"}


# --- 4 ------------------------------------------------------------------------------------


def test_shadow_through_traefik_leaves_the_mirror_off_and_says_why(
    gw_rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    rollout = gw_rollout
    # Given v1 serving behind the Gateway, whose GatewayClass (Traefik) publishes its
    # supported features without HTTPRouteRequestMirror,
    given_stable_v1_behind_the_gateway(rollout, models)
    # When v2 is rolled out as a shadow, which would mirror v1's traffic to it,
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), version("v2", models["v2"])],
            "stable": "v1",
            "rollout": {
                "candidate": "v2",
                "strategy": "shadow",
                "iterations": 1,
                "analysis": analysis(ERROR_RATE, min_samples=1),
            },
        }
    )
    # Then Degraded says the mirror was left off, naming the GatewayClass and what to do,
    status = rollout.wait(
        "Degraded to say MirrorUnsupported",
        lambda st: any(
            c.get("type") == "Degraded" and c.get("reason") == "MirrorUnsupported"
            for c in st.get("conditions") or []
        ),
        timeout=300,
    )
    degraded = rollout.condition("Degraded")
    assert degraded["status"] == "True", rollout.explain(operator)
    assert "GatewayClass traefik" in degraded["message"]
    assert "router istio" in degraded["message"]
    assert rollout.condition("Ready")["status"] == "True", rollout.explain(operator)
    # a Warning Event says it too,
    warnings = [e for e in rollout.events() if e.get("reason") == "MirrorUnsupported"]
    assert warnings, rollout.explain(operator)
    assert warnings[0]["type"] == "Warning"
    # the route Traefik accepted carries no RequestMirror filter,
    route = rollout.api.get(HTTP_ROUTE, rollout.namespace, rollout.name) or {}
    filters = [f for r in route["spec"]["rules"] for f in r.get("filters") or []]
    assert all(f.get("type") != "RequestMirror" for f in filters), route["spec"]
    assert route_accepted_by_traefik(rollout)
    # stable keeps answering every request through the gateway,
    driver = gateway_driver(rollout)
    since = time.time()
    wait_answers(driver, "v1 to answer after the mirror was left off", since, 60, version="v1")
    # and the rollout waits, saying why, instead of judging mirrored traffic that never
    # arrives: several analysis intervals later it has not started its step or promoted.
    time.sleep(20)
    status = rollout.status()
    assert status["phase"] == "Progressing", rollout.explain(operator)
    assert status.get("stepStartedAt") is None
    assert "traefik" in status.get("message", ""), status.get("message")
    driver.stop()
    sent, _ = driver.recording.snapshot()
    after = [s for s in sent if s.at > since]
    assert after
    assert all(s.code == 200 and s.version == "v1" for s in after), Counter(
        (s.code, s.version) for s in after
    )
