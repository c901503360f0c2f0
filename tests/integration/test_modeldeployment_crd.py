"""The generated ModelDeployment CRD on a real API server.

Sends the shared examples of the API tests (tests/api_cases.py): each valid one must be
stored with the schema's defaults filled in, each invalid one rejected with its message
(or, where only the operator can tell, accepted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e.kube import LocalCluster, wait_for
from tests.api_cases import INVALID, VALID, Case
from tests.crdtools import apply_defaults, root_schema

pytestmark = pytest.mark.integration

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "modelpilot.io_modeldeployments.yaml"
CRD_NAME = "modeldeployments.modelpilot.io"


@pytest.fixture(scope="module")
def crd(local_cluster: LocalCluster) -> str:
    local_cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=modelpilot-tests",
        "-f", str(CRD_FILE),
    )  # fmt: skip
    local_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")

    # Established can precede the first successful create by a moment; wait for the
    # resource to be served rather than guessing.
    def served() -> bool:
        proc = local_cluster.kubectl("get", "modeldeployments", "-A", check=False)
        return proc.returncode == 0

    wait_for("modeldeployments to be served", served)
    return CRD_NAME


def create(local_cluster: LocalCluster, namespace: str, obj: dict[str, Any]) -> tuple[bool, str]:
    proc = local_cluster.kubectl(
        "create", "-n", namespace, "-f", "-", stdin=json.dumps(obj), check=False
    )
    return proc.returncode == 0, proc.stderr


def test_crd_is_established(local_cluster: LocalCluster, crd: str) -> None:
    stored = local_cluster.get("crd", crd)
    assert stored is not None
    versions = {v["name"]: v for v in stored["spec"]["versions"]}
    assert versions["v1alpha1"]["served"]
    assert "status" in versions["v1alpha1"].get("subresources", {})


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_valid_example_is_stored_with_defaults(
    local_cluster: LocalCluster, namespace: str, crd: str, case: Case
) -> None:
    ok, err = create(local_cluster, namespace, case.obj)
    assert ok, err
    name = case.obj["metadata"]["name"]
    stored = local_cluster.get("modeldeployment", name, "-n", namespace)
    assert stored is not None
    expected = apply_defaults(root_schema(), case.obj)
    assert stored["spec"] == expected["spec"]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_example_is_rejected_with_its_message(
    local_cluster: LocalCluster, namespace: str, crd: str, case: Case
) -> None:
    ok, err = create(local_cluster, namespace, case.obj)
    if not case.api_rejects:
        assert ok, f"{case.id}: {case.notes or 'the API server must accept it'}: {err}"
        return
    assert not ok, f"{case.id} was accepted"
    assert case.api_message is not None
    assert case.api_message in err, err
