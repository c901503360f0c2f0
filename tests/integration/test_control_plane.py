"""The local control plane behaves like a real cluster where modelpilot depends on it.

Covers the built versions, the controllers (Deployment -> ReplicaSet -> Pods, garbage
collection), server-side apply with its conflicts, the status subresource on an
upstream CRD, helm against the API server, and the kubeconfig guard.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import versions
from e2e.cluster import Api
from e2e.kube import LocalCluster, NotLocalClusterError, verify_local, wait_for

pytestmark = pytest.mark.integration

UPSTREAM_CRDS = [
    "virtualservices.networking.istio.io",
    "destinationrules.networking.istio.io",
    "httproutes.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "servicemonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
]


def deployment(name: str, replicas: int = 2) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "example.invalid/none:1"}]},
            },
        },
    }


def test_api_server_reports_the_pinned_release(local_cluster: LocalCluster) -> None:
    info = Api(local_cluster.cluster.layout).get_json("/version")
    assert info is not None
    assert info["gitVersion"] == versions.KUBERNETES
    assert info["major"] == "1"
    client = json.loads(local_cluster.kubectl("version", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == versions.KUBERNETES
    assert client["serverVersion"]["gitVersion"] == versions.KUBERNETES


def test_upstream_crds_are_established(local_cluster: LocalCluster) -> None:
    for name in UPSTREAM_CRDS:
        crd = local_cluster.get("crd", name)
        assert crd is not None, name
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True", name


def test_upstream_crd_schema_rejects_invalid_objects(
    local_cluster: LocalCluster, namespace: str
) -> None:
    good = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "fraud", "namespace": namespace},
        "spec": {
            "hosts": ["fraud"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": "fraud", "subset": "v1"}, "weight": 90},
                        {"destination": {"host": "fraud", "subset": "v2"}, "weight": 10},
                    ]
                }
            ],
        },
    }
    local_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(good))
    stored = local_cluster.get("virtualservice", "fraud", "-n", namespace)
    assert stored is not None
    assert stored["spec"]["http"][0]["route"][1]["weight"] == 10

    bad = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "fraud", "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"backendRefs": [{"name": "fraud-v1", "port": 8080, "weight": -5}]}],
        },
    }
    proc = local_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert proc.returncode != 0
    assert "weight" in proc.stderr


def test_deployment_makes_replicaset_and_pods(local_cluster: LocalCluster, namespace: str) -> None:
    local_cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=json.dumps(deployment("web", 2))
    )

    def replicasets() -> list[dict[str, Any]] | None:
        rs = local_cluster.get("replicasets", "-n", namespace, "-l", "app=web")
        return (rs or {}).get("items") or None

    (rs,) = wait_for("the Deployment's ReplicaSet", replicasets)
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Deployment", "web", True)

    def pods() -> list[dict[str, Any]] | None:
        found = local_cluster.get("pods", "-n", namespace, "-l", "app=web")
        items = (found or {}).get("items", [])
        return items if len(items) == 2 else None

    for pod in wait_for("two pods", pods):
        assert pod["metadata"]["ownerReferences"][0]["name"] == rs["metadata"]["name"]
        # The ServiceAccount admission plugin mounted the namespace's token.
        volumes = [v["name"] for v in pod["spec"]["volumes"]]
        assert any(v.startswith("kube-api-access-") for v in volumes)


def test_garbage_collector_removes_dependents(local_cluster: LocalCluster, namespace: str) -> None:
    local_cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=json.dumps(deployment("gc", 1))
    )
    wait_for(
        "the ReplicaSet",
        lambda: (local_cluster.get("replicasets", "-n", namespace) or {}).get("items"),
    )
    local_cluster.kubectl(
        "delete", "deployment", "gc", "-n", namespace, "--cascade=background", "--wait=false"
    )
    wait_for(
        "the garbage collector to delete the ReplicaSet",
        lambda: not (local_cluster.get("replicasets", "-n", namespace) or {}).get("items"),
    )


def test_server_side_apply_tracks_owners_and_conflicts(
    local_cluster: LocalCluster, namespace: str
) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "weights", "namespace": namespace},
        "data": {"v1": "100"},
    }
    local_cluster.kubectl(
        "apply", "--server-side", "--field-manager=operator", "-f", "-", stdin=json.dumps(cm)
    )
    cm["data"] = {"v1": "50"}
    proc = local_cluster.kubectl(
        "apply", "--server-side", "--field-manager=someone", "-f", "-",
        stdin=json.dumps(cm), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "conflict" in proc.stderr.lower()
    local_cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=someone", "-f", "-",
        stdin=json.dumps(cm),
    )  # fmt: skip
    stored = local_cluster.get("configmap", "weights", "-n", namespace, "--show-managed-fields")
    assert stored is not None
    assert stored["data"] == {"v1": "50"}
    managers = {m["manager"] for m in stored["metadata"]["managedFields"]}
    assert "someone" in managers


def test_status_subresource_is_separate_from_spec(
    local_cluster: LocalCluster, namespace: str
) -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"backendRefs": [{"name": "a", "port": 80}]}],
        },
    }
    local_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(route))
    status = {
        "status": {
            "parents": [
                {
                    "parentRef": {"name": "gw"},
                    "controllerName": "modelpilot.io/test",
                    "conditions": [
                        {
                            "type": "Accepted",
                            "status": "True",
                            "reason": "Accepted",
                            "message": "",
                            "lastTransitionTime": "2025-01-01T00:00:00Z",
                        }
                    ],
                }
            ]
        }
    }
    # A status written through the main resource is dropped ...
    local_cluster.kubectl(
        "patch", "httproute", "r", "-n", namespace, "--type=merge", "-p", json.dumps(status)
    )
    stored = local_cluster.get("httproute", "r", "-n", namespace)
    assert stored is not None
    assert not stored.get("status", {}).get("parents")
    # ... and kept through the status subresource, without bumping the generation.
    generation = stored["metadata"]["generation"]
    local_cluster.kubectl(
        "patch", "httproute", "r", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps(status),
    )  # fmt: skip
    stored = local_cluster.get("httproute", "r", "-n", namespace)
    assert stored is not None
    assert stored["status"]["parents"][0]["controllerName"] == "modelpilot.io/test"
    assert stored["metadata"]["generation"] == generation


def test_helm_installs_a_chart_with_a_kube_version_constraint(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    minor = versions.KUBERNETES.split(".")[1]
    (chart / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "probe",
                "version": "0.1.0",
                # Helm reads the server's /version: this fails on a v0.0.0-master build.
                "kubeVersion": f">=1.{minor}.0-0",
            }
        )
    )
    (chart / "templates" / "cm.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: ConfigMap
            metadata: {name: probe}
            data: {kube: "{{ .Capabilities.KubeVersion.Version }}"}
            """
        )
    )
    helm = str(local_cluster.bin / "helm")
    version = subprocess.run(
        [helm, "version", "--short"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith(versions.HELM)
    subprocess.run(
        [helm, "install", "probe", str(chart), "-n", namespace, "--wait",
         f"--kubeconfig={local_cluster.kubeconfig}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    cm = local_cluster.get("configmap", "probe", "-n", namespace)
    assert cm is not None
    assert cm["data"]["kube"] == versions.KUBERNETES


def test_guard_refuses_a_foreign_kubeconfig(local_cluster: LocalCluster, tmp_path: Path) -> None:
    config = yaml.safe_load(local_cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://10.1.2.3:6443"
    foreign = tmp_path / "foreign"
    foreign.write_text(yaml.safe_dump(config))
    with pytest.raises(NotLocalClusterError, match="not the local cluster"):
        verify_local(local_cluster.cluster, foreign)
    verify_local(local_cluster.cluster)
