"""A `format: torchserve` ModelDeployment on the local cluster: the init containers fetch
the sample `.mar` and place the rendered model config beside it, and the runtime serves
it through a supervised TorchServe on the pod's address.

Needs torch and torch-model-archiver here (to archive the sample) and TorchServe and Java
for the node agent, which runs the pods with its own Python (``make torchserve-env`` in
that environment); the test is skipped, saying which is missing, otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.kube import LocalCluster
from e2e.operator_process import OperatorProcess
from tests.integration.operator.conftest import (
    apply,
    model_deployment,
    pod_answers,
    wait_condition,
)

# Generous: pods start slowly on a loaded machine; the timeout only stops a hung run.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _node_agent_python(cluster: LocalCluster) -> str | None:
    import json

    state = json.loads(cluster.cluster.layout.state.read_text())
    pid = next((p["pid"] for p in state["processes"] if p["name"] == "node-agent"), None)
    if pid is None:
        return None
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[0].decode() if argv and argv[0] else None


@pytest.fixture(scope="module")
def mar_dir(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="archiving the sample .mar needs torch here")
    pytest.importorskip("model_archiver", reason="archiving the sample needs torch-model-archiver")
    python = _node_agent_python(local_cluster)
    if python is None:
        pytest.skip("no node agent found in the local cluster's state")
    probe = subprocess.run([python, "-c", "import ts, torch"], capture_output=True, check=False)
    if probe.returncode != 0 or shutil.which("java") is None:
        pytest.skip(
            f"the node agent runs pods with {python}, which lacks TorchServe or Java "
            "(make torchserve-env in that environment)"
        )
    from modelpilot_runtime.backends.torchserve.sample import write_mar

    return write_mar(tmp_path_factory.mktemp("ts"), batch=4, delay_ms=5.0).parent


def test_torchserve_version_serves(
    local_cluster: LocalCluster, namespace: str, operator: OperatorProcess, mar_dir: Path
) -> None:
    obj = model_deployment("ts", namespace, mar_dir)
    version = obj["spec"]["versions"][0]
    version["model"] = {"format": "torchserve", "storageUri": f"file://{mar_dir}/"}
    version["runtime"] = {
        "warmup": {"enabled": False},
        "batching": {"maxBatchSize": 4, "maxDelay": "5ms"},
        "torchserve": {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "handler_batch", "datatype": "INT64", "shape": [-1, 1]},
            ],
        },
    }
    version["resources"] = {"cpu": "500m", "memory": "1Gi"}
    apply(local_cluster, obj)
    wait_condition(local_cluster, namespace, "ts", "Ready", timeout=600)
    assert pod_answers(local_cluster, namespace, "ts", "v1")
    md = local_cluster.get("modeldeployment", "ts", "-n", namespace)
    assert md is not None
    assert md["status"]["versions"][0]["provider"].startswith("TorchServe")
    assert operator.alive()
