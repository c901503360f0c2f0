"""The operator against the local cluster: create, update, delete, drift, SIGKILL, invalid specs.

Pods run as local processes (the node agent), so "Ready and answering" is the real runtime
serving the sample model on the pod's own address.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from e2e.kube import LocalCluster, wait_for
from e2e.operator_process import OperatorProcess
from tests.integration.operator.conftest import (
    apply,
    children,
    condition,
    model_deployment,
    pod_answers,
    wait_condition,
)

# Generous: pods start slowly on a loaded machine; the timeout only stops a hung run.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_create_update_delete(
    local_cluster: LocalCluster, namespace: str, operator: OperatorProcess, model_dir: Path
) -> None:
    apply(local_cluster, model_deployment("fraud", namespace, model_dir))
    wait_condition(local_cluster, namespace, "fraud", "Ready")
    assert children(local_cluster, namespace, "deployments", "fraud") == ["fraud-v1"]
    assert children(local_cluster, namespace, "services", "fraud") == ["fraud", "fraud-v1"]
    assert children(local_cluster, namespace, "virtualservices", "fraud") == ["fraud"]
    assert children(local_cluster, namespace, "destinationrules", "fraud") == ["fraud"]
    wait_for("v1 answering", lambda: pod_answers(local_cluster, namespace, "fraud", "v1"))
    md = local_cluster.get("modeldeployment", "fraud", "-n", namespace)
    assert md is not None
    status = md["status"]
    assert status["observedGeneration"] == md["metadata"]["generation"]
    assert status["weights"] == {"v1": 100}
    assert status["versions"][0]["readyReplicas"] == 1
    assert status["versions"][0]["provider"] == "CPUExecutionProvider"

    # Update: new batching and autoscaling for v1, a second version with two fixed replicas.
    updated = model_deployment("fraud", namespace, model_dir)
    v1 = updated["spec"]["versions"][0]
    v1["runtime"] = {**v1["runtime"], "batching": {"maxBatchSize": 16}}
    v1["scaling"] = {"minReplicas": 1, "maxReplicas": 3, "metrics": [{"type": "cpu", "target": 70}]}
    updated["spec"]["versions"].append(
        {**v1, "name": "v2", "scaling": {"minReplicas": 2, "maxReplicas": 2}}
    )
    apply(local_cluster, updated)
    wait_for(
        "v2's Deployment",
        lambda: (
            children(local_cluster, namespace, "deployments", "fraud") == ["fraud-v1", "fraud-v2"]
        ),
    )

    def v1_batch() -> bool:
        dep = local_cluster.get("deployment", "fraud-v1", "-n", namespace) or {}
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        return bool(args[args.index("--max-batch-size") + 1] == "16")

    wait_for("v1 re-rendered with the new batch size", v1_batch)
    wait_for(
        "v1's HPA and v2's PDB",
        lambda: (
            children(local_cluster, namespace, "horizontalpodautoscalers", "fraud") == ["fraud-v1"]
            and children(local_cluster, namespace, "poddisruptionbudgets", "fraud") == ["fraud-v2"]
        ),
    )
    hpa = local_cluster.get("hpa", "fraud-v1", "-n", namespace)
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    v2 = local_cluster.get("deployment", "fraud-v2", "-n", namespace)
    assert v2 is not None
    assert v2["spec"]["replicas"] == 2
    wait_for("v2 answering", lambda: pod_answers(local_cluster, namespace, "fraud", "v2"))
    wait_for(
        "v1 answering after its update",
        lambda: pod_answers(local_cluster, namespace, "fraud", "v1"),
    )

    def both_ready() -> bool:
        md = local_cluster.get("modeldeployment", "fraud", "-n", namespace) or {}
        versions = {v["name"]: v for v in md.get("status", {}).get("versions", [])}
        return bool(
            md.get("status", {}).get("observedGeneration") == md["metadata"]["generation"]
            and versions.get("v2", {}).get("readyReplicas") == 2
            and versions.get("v1", {}).get("readyReplicas", 0) >= 1
        )

    wait_for("status reports both versions ready", both_ready)
    wait_condition(local_cluster, namespace, "fraud", "Ready")
    dr = local_cluster.get("destinationrule", "fraud", "-n", namespace)
    assert dr is not None
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2"]

    # Removing a version removes its objects; dropping autoscaling removes the HPA.
    apply(local_cluster, model_deployment("fraud", namespace, model_dir))
    wait_for(
        "v2 pruned",
        lambda: children(local_cluster, namespace, "deployments", "fraud") == ["fraud-v1"],
    )
    wait_for(
        "HPA and PDB pruned",
        lambda: (
            children(local_cluster, namespace, "horizontalpodautoscalers", "fraud") == []
            and children(local_cluster, namespace, "poddisruptionbudgets", "fraud") == []
        ),
    )

    local_cluster.kubectl("delete", "modeldeployment", "fraud", "-n", namespace)

    def collected(kind: str) -> Callable[[], bool]:
        return lambda: children(local_cluster, namespace, kind, "fraud") == []

    for kind in (
        "deployments",
        "replicasets",
        "pods",
        "services",
        "virtualservices",
        "destinationrules",
        "servicemonitors",
    ):
        wait_for(f"{kind} garbage-collected", collected(kind))
    assert operator.alive()


def test_drift_is_repaired_within_a_resync(
    local_cluster: LocalCluster, namespace: str, operator: OperatorProcess, model_dir: Path
) -> None:
    apply(local_cluster, model_deployment("drift", namespace, model_dir))
    wait_for(
        "children",
        lambda: children(local_cluster, namespace, "services", "drift") == ["drift", "drift-v1"],
    )
    local_cluster.kubectl("delete", "service", "drift", "-n", namespace)
    local_cluster.kubectl(
        "patch",
        "virtualservice",
        "drift",
        "-n",
        namespace,
        "--type=json",
        "-p",
        '[{"op": "replace", "path": "/spec/http/0/route/0/destination/subset", "value": "x"}]',
    )
    wait_for(
        "Service put back",
        lambda: "drift" in children(local_cluster, namespace, "services", "drift"),
    )

    def vs_repaired() -> bool:
        vs = local_cluster.get("virtualservice", "drift", "-n", namespace) or {}
        return bool(vs["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v1")

    wait_for("VirtualService put back", vs_repaired)


def test_sigkill_mid_reconcile_then_restart_converges(
    local_cluster: LocalCluster, namespace: str, operator: OperatorProcess, model_dir: Path
) -> None:
    obj = model_deployment("crash", namespace, model_dir)
    obj["spec"]["versions"].append({**obj["spec"]["versions"][0], "name": "v2"})
    apply(local_cluster, obj)
    # Killed as soon as the first child exists: the rest of the reconcile never happened.
    wait_for(
        "first child", lambda: children(local_cluster, namespace, "deployments", "crash"), 60, 0.05
    )
    operator.kill()
    operator.start()
    wait_for(
        "every child",
        lambda: (
            children(local_cluster, namespace, "services", "crash")
            == ["crash", "crash-v1", "crash-v2"]
            and children(local_cluster, namespace, "virtualservices", "crash") == ["crash"]
        ),
    )
    assert children(local_cluster, namespace, "deployments", "crash") == ["crash-v1", "crash-v2"]
    rs = local_cluster.get("replicasets", "-n", namespace, "-l", "modelpilot.io/model=crash")
    assert rs is not None
    assert len(rs["items"]) == 2, "one ReplicaSet per version: nothing was rolled twice"


def test_invalid_spec_is_reported_not_crash_looping(
    local_cluster: LocalCluster, namespace: str, operator: OperatorProcess, model_dir: Path
) -> None:
    obj = model_deployment("bad", namespace, model_dir)
    obj["spec"]["versions"].append({"name": "v2", "model": {"storageUri": f"file://{model_dir}/"}})
    obj["spec"]["rollout"] = {
        "candidate": "v2",
        "analysis": {
            "checks": [{"name": "q", "query": "sum(rate(x_total[{{ interval }}])", "min": 1}]
        },
    }
    apply(local_cluster, obj)
    degraded = wait_condition(local_cluster, namespace, "bad", "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "not valid PromQL" in degraded["message"]
    assert children(local_cluster, namespace, "deployments", "bad") == []
    events = local_cluster.get(
        "events", "-n", namespace, "--field-selector", "involvedObject.name=bad"
    ) or {"items": []}
    assert any(e["reason"] == "InvalidSpec" for e in events["items"])
    assert operator.alive()
    # Fixing the spec is all it takes.
    del obj["spec"]["rollout"]["analysis"]
    apply(local_cluster, obj)
    wait_for(
        "children after the fix",
        lambda: children(local_cluster, namespace, "deployments", "bad") == ["bad-v1", "bad-v2"],
    )
    # Status is written after the children, in the same reconcile.
    wait_for(
        "InvalidSpec cleared",
        lambda: (
            condition(local_cluster, namespace, "bad", "Degraded").get("reason")
            not in (None, "InvalidSpec")
        ),
    )
    assert operator.alive()


def test_unsupported_storage_and_missing_secret_tell_the_user(
    local_cluster: LocalCluster, namespace: str, operator: OperatorProcess, model_dir: Path
) -> None:
    obj = model_deployment("gcs", namespace, model_dir)
    obj["spec"]["versions"][0]["model"] = {"storageUri": "gs://bucket/model/"}
    apply(local_cluster, obj)
    degraded = wait_condition(local_cluster, namespace, "gcs", "Degraded")
    assert degraded["reason"] == "UnsupportedStorage"
    assert "use s3://" in degraded["message"]
    assert children(local_cluster, namespace, "deployments", "gcs") == []

    obj = model_deployment("creds", namespace, model_dir)
    obj["spec"]["versions"][0]["model"]["credentialsSecret"] = "nowhere"
    apply(local_cluster, obj)
    degraded = wait_condition(local_cluster, namespace, "creds", "Degraded")
    assert "create the Secret" in degraded["message"]
    assert "nowhere" in degraded["message"]


def test_delete_with_no_operator_running_completes(
    local_cluster: LocalCluster, namespace: str, operator: OperatorProcess, model_dir: Path
) -> None:
    """No finalizer waits for the operator: with it stopped, a ModelDeployment deleted by
    its user goes at once and the garbage collector takes its children."""
    apply(local_cluster, model_deployment("orphan", namespace, model_dir))
    wait_for(
        "every child",
        lambda: children(local_cluster, namespace, "virtualservices", "orphan") == ["orphan"],
    )
    md = local_cluster.get("modeldeployment", "orphan", "-n", namespace)
    assert md is not None
    assert not md["metadata"].get("finalizers")
    operator.kill()
    done = local_cluster.kubectl(
        "delete", "modeldeployment", "orphan", "-n", namespace, "--timeout=60s", check=False
    )
    assert done.returncode == 0, done.stderr
    wait_for(
        "the children to be garbage-collected",
        lambda: (
            not any(
                children(local_cluster, namespace, kind, "orphan")
                for kind in ("deployments", "services", "virtualservices", "destinationrules")
            )
        ),
        timeout=120,
    )
    operator.start()
