"""Fixtures for the operator's integration tests: the operator as a real process, under
the local cluster's admin identity or a ServiceAccount's, and a sample model on disk."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.kube import LocalCluster, wait_for
from e2e.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample ONNX model (``tiny``: [N, 8] -> 3 classes) as a file:// source."""
    from modelpilot_runtime import samples

    dest = tmp_path_factory.mktemp("models")
    samples.main([str(dest), "--models", "tiny"])
    return dest / "tiny" / "1"


@pytest.fixture
def operator(
    local_cluster: LocalCluster, namespace: str, crd_installed: None, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(namespace, local_cluster.kubeconfig, tmp_path / "operator.log")
    op.start()
    yield op
    if not op.alive():
        op.start()
    release(local_cluster, namespace)
    op.stop()


def release(cluster: LocalCluster, namespace: str) -> None:
    """Delete the namespace's ModelDeployments (the garbage collector takes their
    children; no finalizer waits for the operator)."""
    cluster.kubectl(
        "delete", "modeldeployments", "--all", "-n", namespace, "--timeout=120s", check=False
    )


def model_deployment(name: str, namespace: str, model_dir: Path, **spec: Any) -> dict[str, Any]:
    version = {
        "model": {"storageUri": f"file://{model_dir}/"},
        "runtime": {"executionProviders": ["cpu"], "warmup": {"enabled": False}},
        "resources": {"cpu": "100m", "memory": "256Mi"},
    }
    return {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "versions": [{"name": "v1", **version}],
            "stable": "v1",
            "routing": {"router": "istio"},
        }
        | spec,
    }


def apply(cluster: LocalCluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj))


def condition(cluster: LocalCluster, namespace: str, name: str, ctype: str) -> dict[str, Any]:
    md = cluster.get("modeldeployment", name, "-n", namespace) or {}
    for c in md.get("status", {}).get("conditions", []):
        if c["type"] == ctype:
            return dict(c)
    return {}


def wait_condition(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    ctype: str,
    status: str = "True",
    timeout: float = 180,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        c = condition(cluster, namespace, name, ctype)
        return c if c.get("status") == status else None

    return wait_for(f"{ctype}={status} on {namespace}/{name}", probe, timeout=timeout)


def children(cluster: LocalCluster, namespace: str, kind: str, model: str) -> list[str]:
    items = (cluster.get(kind, "-n", namespace, "-l", f"modelpilot.io/model={model}") or {}).get(
        "items", []
    )
    return sorted(i["metadata"]["name"] for i in items)


def pod_answers(cluster: LocalCluster, namespace: str, model: str, version: str) -> bool:
    """A pod of the version answers an inference request (the sample's [1, 8] input)
    through its own pod IP."""
    pods = cluster.get(
        "pods",
        "-n",
        namespace,
        "-l",
        f"modelpilot.io/model={model},modelpilot.io/version={version}",
    ) or {"items": []}
    for pod in pods["items"]:
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            continue
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.1] * 8}]}
        ).encode()
        url = f"http://{ip}:8080/v2/models/{model}/versions/{version}/infer"
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status == 200 and bool(json.loads(resp.read())["outputs"])
        except OSError:
            return False
    return False
