"""Rollouts end to end: the operator as a process, runtime pods running as local processes,
the real Prometheus scraping them, and the mesh stand-in sending traffic.

There is no Istio data plane here: :class:`e2e.traffic.MeshDriver` stands in for it. It
splits requests between the versions by the weights it reads back from the VirtualService
the operator wrote (and sends a copy to the candidate when the route mirrors), so the
candidate gets exactly the traffic the route gives it.

Each scenario reads Given / When / Then. Analysis intervals are short (5 s) so that the
module runs in minutes; every wait has a generous timeout that only keeps a broken
cluster from hanging the run.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.kube import wait_for
from e2e.operator_process import OperatorProcess
from e2e.traffic import infer_body
from modelpilot_operator.rollout import parse_time

from .conftest import ROLLOUT_TIMEOUT, Rollout, analysis, version

# Per test: the pod start-up and the rollout itself, both bounded by the waits inside.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ERROR_RATE = {"name": "error-rate", "builtin": "errorRate"}
LATENCY = {"name": "latency-p99", "builtin": "latencyP99", "maxRatio": 1.5}
MEDIAN_LATENCY = {"name": "latency-p50", "builtin": "latencyP50", "maxRatio": 1.5}
DIVERGENCE = {"name": "agreement", "builtin": "predictionDivergence", "max": 0.05}


def canary(
    candidate: str,
    steps: list[int],
    *checks: dict[str, Any],
    failure_limit: int = 1,
    promotion: str = "auto",
) -> dict[str, Any]:
    return {
        "candidate": candidate,
        "strategy": "canary",
        "steps": [{"weight": w} for w in steps],
        "analysis": analysis(*checks, failure_limit=failure_limit),
        "promotion": promotion,
    }


def given_stable_v1_serving(
    rollout: Rollout,
    models: dict[str, Path],
    body: Callable[[random.Random], dict[str, Any]] | None = None,
) -> None:
    """v1 alone, Ready, with traffic flowing through the mesh stand-in."""
    rollout.apply({"versions": [version("v1", models["v1"])], "stable": "v1"})
    rollout.wait_versions_ready("v1")
    rollout.wait_phase("Stable")
    rollout.start_traffic(rate=20, body=body)


def judged(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records from the first interval with a verdict (before it, the candidate may
    not have answered minSamples requests yet: inconclusive, neither pass nor fail)."""
    first = next((i for i, r in enumerate(records) if r["verdict"] != "inconclusive"), None)
    assert first is not None, "no interval was judged"
    return records[first:]


def assert_rolled_back_by(
    rollout: Rollout, operator: OperatorProcess, checks: set[str], failure_limit: int
) -> dict[str, Any]:
    """RolledBack by ``checks`` (only these failed) within failureLimit + 1 intervals of
    the first judged one."""
    status = rollout.wait_phase("Promoted", "RolledBack", "Failed")
    assert status["phase"] == "RolledBack", rollout.explain(operator)
    records = judged(status["analysis"])
    # failureLimit failures are tolerated; the next one rolls back, and nothing passed.
    assert len(records) <= failure_limit + 1, rollout.explain(operator)
    assert all(r["verdict"] != "pass" for r in records), rollout.explain(operator)
    assert sum(r["verdict"] == "fail" for r in records) == failure_limit + 1
    for r in records:
        if r["verdict"] == "fail":
            assert failing_check_names(r), r
            assert failing_check_names(r) <= checks, r
    # The decision was taken on the tick that analysed the last interval: same timestamp.
    cond = rollout.condition("RolledBack")
    assert cond["status"] == "True"
    assert cond["reason"] == "AnalysisFailed"
    assert cond["lastTransitionTime"] == records[-1]["at"]
    # Intervals follow one another without gaps or overlaps.
    ats = [parse_time(r["at"]) for r in status["analysis"]]
    assert ats == sorted(ats)
    assert rollout.condition("Promoted")["status"] == "False"
    # The candidate has no traffic left, as read back from the route.
    final = rollout.wait("the route to read back v2 at 0", lambda st: not st["weights"].get("v2"))
    assert final["weights"].get("v1") == 100
    assert final["stable"] == "v1"
    return status


def modelpilot(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `modelpilot` command (KUBECONFIG is the local cluster's for the session)."""
    cli = Path(sys.executable).parent / "modelpilot"
    return subprocess.run(
        [str(cli), *args], capture_output=True, text=True, check=False, timeout=60
    )


def failing_check_names(record: dict[str, Any]) -> set[str]:
    return {c["name"] for c in record["checks"] if c["verdict"] == "fail"}


# --- 1 ------------------------------------------------------------------------------------


def test_good_candidate_is_promoted_automatically(
    rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    # Given v1 serving under traffic,
    given_stable_v1_serving(rollout, models)
    # and someone waiting for the promotion the way a pipeline would:
    waiter = subprocess.Popen(
        [
            str(rollout.cluster.bin / "kubectl"),
            f"--kubeconfig={rollout.cluster.kubeconfig}",
            "wait",
            "--for=condition=Promoted",
            f"modeldeployment/{rollout.name}",
            "-n",
            rollout.namespace,
            f"--timeout={ROLLOUT_TIMEOUT:.0f}s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # When v2, as good as v1, is rolled out as a canary in two steps,
        rollout.apply(
            {
                "versions": [version("v1", models["v1"]), version("v2", models["v2"])],
                "stable": "v1",
                "rollout": canary("v2", [25, 50], ERROR_RATE, LATENCY),
            }
        )
        # Then it is promoted without anyone's help,
        status = rollout.wait_phase("Promoted", "RolledBack", "Failed")
        assert status["phase"] == "Promoted", rollout.explain(operator)
        # and `kubectl wait --for=condition=Promoted` returns.
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
        assert "condition met" in out
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()

    # The route carries the candidate at 100%, read back from the VirtualService,
    assert status["weights"].get("v2") == 100
    assert status["weights"].get("v1", 0) == 0
    assert status["stable"] == "v2"
    promoted = rollout.condition("Promoted")
    assert promoted["status"] == "True"
    assert rollout.condition("RolledBack")["status"] == "False"
    # every step passed on analysed evidence, and nothing failed.
    records = status["analysis"]
    assert {r["step"] for r in records if r["verdict"] == "pass"} == {0, 1}
    # A fresh candidate's first requests can be slow on a loaded machine (cold process):
    # one failed interval is what failureLimit 1 tolerates; more would have rolled back.
    assert sum(r["verdict"] == "fail" for r in records) <= 1, rollout.explain(operator)
    # The mesh stand-in really moved the traffic: the candidate answered requests.
    assert rollout.driver is not None
    sent, _ = rollout.driver.recording.snapshot()
    assert any(s.version == "v2" and s.code == 200 for s in sent)


# --- 2 ------------------------------------------------------------------------------------


def test_candidate_with_injected_errors_is_rolled_back(
    rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    # Given v1 serving under traffic,
    given_stable_v1_serving(rollout, models)
    # When v2, whose runtime fails 30% of its requests, is rolled out with failureLimit 1,
    bad = version("v2", models["v2"], faults={"MODELPILOT_FAULT_ERROR_RATIO": "0.3"})
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), bad],
            "stable": "v1",
            "rollout": canary("v2", [50], ERROR_RATE, failure_limit=1),
        }
    )
    # Then the error-rate check rolls it back within failureLimit + 1 judged intervals.
    status = assert_rolled_back_by(rollout, operator, {"error-rate"}, failure_limit=1)
    last = status["analysis"][-1]["checks"][0]
    assert last["candidateValue"] > last["stableValue"]
    assert last["pValue"] is not None
    # The mesh stand-in saw the errors it was rolled back for.
    assert rollout.driver is not None
    sent, _ = rollout.driver.recording.snapshot()
    assert any(s.version == "v2" and s.code >= 500 for s in sent)


# --- 3 ------------------------------------------------------------------------------------


def test_candidate_with_added_latency_is_rolled_back(
    rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    # Given v1 serving under traffic,
    given_stable_v1_serving(rollout, models)
    # When v2, whose runtime adds 150 ms to every request, is rolled out with latency
    # checks (p50 and p99: on this shared machine stable's own p99 can be that slow),
    slow = version("v2", models["v2"], faults={"MODELPILOT_FAULT_LATENCY_MS": "150"})
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), slow],
            "stable": "v1",
            "rollout": canary("v2", [50], MEDIAN_LATENCY, LATENCY, failure_limit=1),
        }
    )
    # Then the latency checks roll it back,
    status = assert_rolled_back_by(
        rollout, operator, {"latency-p50", "latency-p99"}, failure_limit=1
    )
    # on quantiles that show the slow-down (seconds, from the histograms of both).
    last = {c["name"]: c for c in status["analysis"][-1]["checks"]}
    p50 = last["latency-p50"]
    assert p50["verdict"] == "fail", status["analysis"][-1]
    assert p50["candidateValue"] > 1.5 * p50["stableValue"]
    assert p50["candidateValue"] >= 0.15


# --- 4 ------------------------------------------------------------------------------------


def test_manual_gate_waits_until_modelpilot_promote(
    rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    # Given v1 serving under traffic,
    given_stable_v1_serving(rollout, models)
    # When v2 is rolled out with manual promotion,
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), version("v2", models["v2"])],
            "stable": "v1",
            "rollout": canary("v2", [50], ERROR_RATE, promotion="manual"),
        }
    )
    # Then, its step passed, it waits for a person in AwaitingPromotion,
    status = rollout.wait_phase("AwaitingPromotion", "Promoted", "RolledBack", "Failed")
    assert status["phase"] == "AwaitingPromotion", rollout.explain(operator)
    seen = len(status["analysis"])
    # and keeps waiting (still analysed, never promoted on its own) two intervals later,
    status = rollout.wait(
        "two more intervals analysed", lambda st: len(st.get("analysis") or []) >= seen + 2
    )
    assert status["phase"] == "AwaitingPromotion", rollout.explain(operator)
    assert status["weights"] == {"v1": 50, "v2": 50}
    assert rollout.condition("Promoted")["status"] == "False"
    revision = status["candidateRevision"]

    # When someone approves it with the real CLI,
    done = modelpilot("promote", rollout.name, "-n", rollout.namespace)
    assert done.returncode == 0, done.stderr
    assert f"promote revision {revision} requested" in done.stdout
    request_id = done.stdout.rsplit("(request ", 1)[1].strip().rstrip(")")

    # Then it is promoted: all traffic to v2, the request acted on once.
    status = rollout.wait_phase("Promoted", "RolledBack", "Failed")
    assert status["phase"] == "Promoted", rollout.explain(operator)
    assert status["handledRequest"] == request_id
    assert status["weights"].get("v2") == 100
    assert not status["weights"].get("v1")
    assert rollout.condition("Promoted")["status"] == "True"
    promoting = [e["message"] for e in rollout.events() if e.get("reason") == "Promoting"]
    assert any("promotion approved" in m and revision in m for m in promoting), promoting


# --- 5 ------------------------------------------------------------------------------------


def test_operator_killed_mid_rollout_resumes_from_status(
    rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    steps = [20, 40, 60, 80]
    # Given v1 serving under traffic, and v2 rolled out in four steps,
    given_stable_v1_serving(rollout, models)
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), version("v2", models["v2"])],
            "stable": "v1",
            "rollout": canary("v2", steps, ERROR_RATE),
        }
    )
    # and the rollout in its second step,
    rollout.wait(
        "the second step to start",
        lambda st: st.get("step") == 1 and st.get("stepStartedAt") is not None,
    )
    # When the operator is killed with SIGKILL,
    operator.kill()
    before = rollout.status()
    assert before["phase"] == "Progressing", rollout.explain(operator)
    # and stays down for longer than two analysis intervals (nothing moves meanwhile),
    time.sleep(12)
    during = rollout.status()
    assert (during["step"], during["stepStartedAt"], len(during["analysis"])) == (
        before["step"],
        before["stepStartedAt"],
        len(before["analysis"]),
    )
    # and is started again,
    operator.start()
    # Then it carries on from status and finishes.
    status = rollout.wait_phase("Promoted", "RolledBack", "Failed")
    assert status["phase"] == "Promoted", rollout.explain(operator)

    # No step was repeated or skipped: one passing interval per step, in order,
    passes = [r["step"] for r in status["analysis"] if r["verdict"] == "pass"]
    assert passes == [0, 1, 2, 3], rollout.explain(operator)
    record_steps = [r["step"] for r in status["analysis"]]
    assert record_steps == sorted(record_steps)
    # and no step was started twice.
    started = Counter(e["message"] for e in rollout.events() if e.get("reason") == "StepStarted")
    assert all(e_count == 1 for e_count in started.values()), started
    assert all(e.get("count", 1) == 1 for e in rollout.events() if e.get("reason") == "StepStarted")
    # The weights the mesh stand-in read back from the route: always 100 in all, the
    # candidate's share only ever growing, through every step, to 100. (The operator may
    # see the route at 100% and promote before the stand-in's next read of it: wait for
    # that read.)
    driver = rollout.driver
    assert driver is not None
    wait_for(
        "the mesh stand-in to read the route at v2 100%",
        lambda: any(w.get("v2") == 100 for _, w in driver.recording.snapshot()[1]),
        timeout=30,
        interval=0.5,
    )
    _, seen = driver.recording.snapshot()
    shares = [w.get("v2", 0) for _, w in seen]
    assert all(sum(w.values()) == 100 for _, w in seen)
    assert shares == sorted(shares), shares
    assert set(shares) <= {0, *steps, 100}
    assert {*steps, 100} <= set(shares), shares
    assert status["weights"].get("v2") == 100
    assert status["desiredWeights"].get("v2") == 100


# --- 6 ------------------------------------------------------------------------------------


def wide_inputs(rng: random.Random) -> dict[str, Any]:
    """Inputs spread wide enough that the two classifiers disagree on many of them (on
    inputs in [0, 1) both say class 0 nearly always)."""
    return infer_body([rng.gauss(0.0, 3.0) for _ in range(8)])


def test_shadow_of_a_model_that_predicts_differently_is_stopped_by_divergence(
    rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    # Given v1 serving under traffic,
    given_stable_v1_serving(rollout, models, body=wide_inputs)
    # When v2, trained apart, is tried as a shadow: every request mirrored to it, its
    # answers dropped, and the class distributions of both compared,
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), version("v2", models["v2"])],
            "stable": "v1",
            "rollout": {
                "candidate": "v2",
                "strategy": "shadow",
                "mirrorPercent": 100,
                "iterations": 3,
                "analysis": analysis(DIVERGENCE, failure_limit=1),
            },
        }
    )
    # Then it is rolled back by the predictionDivergence check,
    status = assert_rolled_back_by(rollout, operator, {"agreement"}, failure_limit=1)
    last = status["analysis"][-1]["checks"][0]
    assert last["candidateValue"] > 0.05  # Jensen-Shannon divergence, bits
    # having seen only mirrored traffic: v2 never answered a client.
    assert rollout.driver is not None
    sent, seen = rollout.driver.recording.snapshot()
    to_v2 = [s for s in sent if s.version == "v2"]
    assert to_v2
    assert all(s.mirrored for s in to_v2)
    assert all(w.get("v2", 0) == 0 for _, w in seen)
    # The route no longer mirrors.
    assert status["mirrorPercent"] == 0


# --- 7 ------------------------------------------------------------------------------------


def test_too_little_traffic_holds_the_step_until_the_deadline_fails_it(
    rollout: Rollout, operator: OperatorProcess, models: dict[str, Path]
) -> None:
    # Given v1 serving under traffic,
    given_stable_v1_serving(rollout, models)
    # When v2 (as good as v1) is rolled out at 10% with an error-rate tolerance of 0.1 pt:
    # showing that with 95% confidence takes thousands of candidate requests, far more than
    # 10% of 20 requests/s brings before the 40 s inconclusiveDeadline,
    tight = {**ERROR_RATE, "tolerance": 0.001}
    spec = canary("v2", [10], tight)
    spec["analysis"] = analysis(tight, inconclusive_deadline="40s")
    rollout.apply(
        {
            "versions": [version("v1", models["v1"]), version("v2", models["v2"])],
            "stable": "v1",
            "rollout": spec,
        }
    )
    # Then the step is held, and its message says how much more evidence it needs,
    held = rollout.wait(
        "the step to wait for evidence",
        lambda st: "waiting for evidence" in (st.get("message") or ""),
    )
    assert held["phase"] == "Progressing", rollout.explain(operator)
    assert "more candidate requests needed at this rate" in held["message"]
    assert held["passedIntervals"] == 0
    # and `modelpilot status` shows the planned sample size of the step,
    out = modelpilot("status", rollout.name, "-n", rollout.namespace)
    assert out.returncode == 0, out.stderr
    assert "PLANNED" in out.stdout
    assert "more" in out.stdout
    # until the deadline fails the rollout, saying why: not worse, but not shown good enough.
    status = rollout.wait_phase("Promoted", "RolledBack", "Failed")
    assert status["phase"] == "Failed", rollout.explain(operator)
    assert "InconclusiveDeadline" in status["message"]
    assert "waiting for evidence (error-rate)" in status["message"]
    assert rollout.condition("RolledBack")["reason"] == "InconclusiveDeadline"
    assert all(r["verdict"] == "inconclusive" for r in status["analysis"]), rollout.explain(
        operator
    )
    final = rollout.wait("the route to read back v2 at 0", lambda st: not st["weights"].get("v2"))
    assert final["weights"].get("v1") == 100
