"""Reliability: the operator SIGKILLed at 20 seeded random instants while three
ModelDeployments roll out under traffic.

Each kill lands wherever the operator is at that moment: between a status write and the
route apply, in the middle of an analysis, while caches sync after a restart. Every
rollout must still converge to Promoted with each step started once and passed once, the
candidate's share on the route never going back, and no child left without its owner.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.kube import LocalCluster
from e2e.operator_process import OperatorProcess
from modelpilot_operator.k8s.client import ApiServer

from .conftest import Rollout, analysis, version

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

SEED = 20261203
KILLS = 20
NAMES = ("chaos-a", "chaos-b", "chaos-c")
STEPS = [20, 40, 60, 80]


@pytest.fixture
def rollouts(
    local_cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> Iterator[list[Rollout]]:
    ros = [Rollout(local_cluster, namespace, ApiServer.from_environment(), name=n) for n in NAMES]
    try:
        yield ros
    finally:
        for ro in ros:
            if ro.driver is not None:
                ro.driver.stop()
        if not operator.alive():
            operator.start()
        local_cluster.kubectl(
            "delete", "modeldeployments", "--all", "-n", namespace, "--timeout=120s", check=False
        )


def test_leader_killed_at_20_random_points_every_rollout_converges(
    rollouts: list[Rollout],
    operator: OperatorProcess,
    models: dict[str, Path],
    local_cluster: LocalCluster,
    namespace: str,
) -> None:
    rng = random.Random(SEED)
    for ro in rollouts:
        ro.apply({"versions": [version("v1", models["v1"])], "stable": "v1"})
    for ro in rollouts:
        ro.wait_versions_ready("v1")
        ro.wait_phase("Stable")
        ro.start_traffic(rate=8)
    for ro in rollouts:
        ro.apply(
            {
                "versions": [version("v1", models["v1"]), version("v2", models["v2"])],
                "stable": "v1",
                "rollout": {
                    "candidate": "v2",
                    "strategy": "canary",
                    "steps": [{"weight": w} for w in STEPS],
                    "analysis": analysis(
                        {"name": "error-rate", "builtin": "errorRate"}, min_samples=10
                    ),
                },
            }
        )
    # The kills: a seeded schedule, each up to 6 s after the previous restart.
    kills = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.2, 6.0))
        phases = [ro.status().get("phase") for ro in rollouts]
        kills.append(phases)
        operator.kill()
        operator.start()
    statuses = [ro.wait_phase("Promoted", "RolledBack", "Failed") for ro in rollouts]
    report = "\n\n".join(ro.explain(operator) for ro in rollouts)
    assert [s["phase"] for s in statuses] == ["Promoted"] * len(NAMES), report
    assert operator.starts == KILLS + 1
    # The kills landed while the rollouts were under way, not after they ended.
    assert sum("Progressing" in phases for phases in kills) >= KILLS // 2, kills
    for ro, status in zip(rollouts, statuses, strict=True):
        # Each step passed once, in order; no interval recorded twice.
        passes = [r["step"] for r in status["analysis"] if r["verdict"] == "pass"]
        assert passes == [0, 1, 2, 3], ro.explain(operator)
        ats = [r["at"] for r in status["analysis"]]
        assert ats == sorted(ats)
        assert len(set(ats)) == len(ats), "an interval was recorded twice"
        # No step started twice.
        started = Counter(e["message"] for e in ro.events() if e.get("reason") == "StepStarted")
        assert all(n == 1 for n in started.values()), started
        # The route read back by the mesh stand-in: the candidate's share never went back.
        assert ro.driver is not None
        _, seen = ro.driver.recording.snapshot()
        shares = [w.get("v2", 0) for _, w in seen]
        assert shares == sorted(shares), (ro.name, shares)
        assert status["weights"].get("v2") == 100
    # No orphaned children: every child carries an owner reference to its live object.
    uids = {ro.name: ro.obj()["metadata"]["uid"] for ro in rollouts}
    for kind in ("deployments", "services", "virtualservices", "destinationrules"):
        items = (local_cluster.get(kind, "-n", namespace, "-l", "modelpilot.io/model") or {})[
            "items"
        ]
        for item in items:
            owner = item["metadata"]["labels"]["modelpilot.io/model"]
            refs = {r["uid"] for r in item["metadata"].get("ownerReferences") or []}
            assert uids.get(owner) in refs, f"{kind}/{item['metadata']['name']} is orphaned"
