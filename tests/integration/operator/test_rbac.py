"""The operator under its ServiceAccount, with exactly the rules of config/rbac/role.yaml:
it does its job, and it cannot read Secrets or touch kinds it does not own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from e2e.kube import LocalCluster, wait_for
from e2e.operator_process import OperatorProcess
from modelpilot_operator import rbac
from tests.integration.operator.conftest import (
    apply,
    children,
    model_deployment,
    release,
)

# Generous: pods start slowly on a loaded machine; the timeout only stops a hung run.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def service_account_kubeconfig(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[Path, str]]:
    suffix = secrets.token_hex(3)
    role = rbac.cluster_role(f"modelpilot-operator-test-{suffix}")
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": role["metadata"]["name"]},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"kind": "ServiceAccount", "name": "modelpilot", "namespace": namespace}],
    }
    local_cluster.kubectl("create", "serviceaccount", "modelpilot", "-n", namespace)
    local_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([role, binding]))
    token = local_cluster.kubectl(
        "create", "token", "modelpilot", "-n", namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(local_cluster.kubeconfig.read_text())
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "modelpilot", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "modelpilot"}}],
        "current-context": "sa",
    }
    path = tmp_path / "sa.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    yield path, token
    local_cluster.kubectl(
        "delete", "clusterrolebinding,clusterrole", role["metadata"]["name"], check=False
    )


def test_operator_works_under_its_service_account(
    local_cluster: LocalCluster,
    namespace: str,
    crd_installed: None,
    model_dir: Path,
    service_account_kubeconfig: tuple[Path, str],
    tmp_path: Path,
) -> None:
    kubeconfig, _ = service_account_kubeconfig
    op = OperatorProcess(namespace, kubeconfig, tmp_path / "operator.log")
    op.start()
    try:
        apply(local_cluster, model_deployment("rbac", namespace, model_dir))
        wait_for(
            "children applied under the ServiceAccount",
            lambda: (
                children(local_cluster, namespace, "virtualservices", "rbac") == ["rbac"]
                and children(local_cluster, namespace, "deployments", "rbac") == ["rbac-v1"]
            ),
        )
        wait_for(
            "status written",
            lambda: (
                (local_cluster.get("modeldeployment", "rbac", "-n", namespace) or {})
                .get("status", {})
                .get("observedGeneration")
            ),
        )
        assert op.alive(), op.logs()
        assert "Forbidden" not in op.logs(), op.logs()
    finally:
        release(local_cluster, namespace)
        op.stop()


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("patch", "deployments.apps", True),
        ("delete", "services", True),
        ("patch", "modeldeployments.modelpilot.io/status", True),
        ("create", "events", True),
        ("get", "gateways.gateway.networking.k8s.io", True),
        ("watch", "gatewayclasses.gateway.networking.k8s.io", True),
        ("patch", "gateways.gateway.networking.k8s.io", False),
        ("update", "gatewayclasses.gateway.networking.k8s.io", False),
        ("get", "secrets", False),
        ("list", "secrets", False),
        ("create", "pods", False),
        ("delete", "pods", False),
        ("patch", "configmaps", False),
        ("create", "roles.rbac.authorization.k8s.io", False),
        ("delete", "modeldeployments.modelpilot.io", False),
    ],
)
def test_service_account_permissions(
    local_cluster: LocalCluster,
    namespace: str,
    service_account_kubeconfig: tuple[Path, str],
    verb: str,
    resource: str,
    allowed: bool,
) -> None:
    kubeconfig, _ = service_account_kubeconfig
    proc = local_cluster.kubectl(
        f"--kubeconfig={kubeconfig}", "auth", "can-i", verb, resource, "-n", namespace, check=False
    )
    assert proc.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, proc.stderr)


def test_service_account_cannot_read_a_secret(
    local_cluster: LocalCluster, namespace: str, service_account_kubeconfig: tuple[Path, str]
) -> None:
    kubeconfig, _ = service_account_kubeconfig
    local_cluster.kubectl(
        "create", "secret", "generic", "s3-creds", "-n", namespace, "--from-literal=k=v"
    )
    proc = local_cluster.kubectl(
        f"--kubeconfig={kubeconfig}", "get", "secret", "s3-creds", "-n", namespace, check=False
    )
    assert proc.returncode != 0
    assert "forbidden" in proc.stderr.lower()
