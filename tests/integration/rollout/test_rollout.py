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

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROLLOUT_TIMEOUT, OperatorProcess, Rollout, analysis, version

# Per test: the pod start-up and the rollout itself, both bounded by the waits inside.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ERROR_RATE = {"name": "error-rate", "builtin": "errorRate"}
LATENCY = {"name": "latency-p99", "builtin": "latencyP99", "maxRatio": 1.5}
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


def given_stable_v1_serving(rollout: Rollout, models: dict[str, Path]) -> None:
    """v1 alone, Ready, with traffic flowing through the mesh stand-in."""
    rollout.apply({"versions": [version("v1", models["v1"])], "stable": "v1"})
    rollout.wait_versions_ready("v1")
    rollout.wait_phase("Stable")
    rollout.start_traffic(rate=20)


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
    assert all(r["verdict"] != "fail" for r in records), rollout.explain(operator)
    # The mesh stand-in really moved the traffic: the candidate answered requests.
    assert rollout.driver is not None
    sent, _ = rollout.driver.recording.snapshot()
    assert any(s.version == "v2" and s.code == 200 for s in sent)
