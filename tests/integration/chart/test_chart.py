"""The Helm chart: lint, golden renders, values schema, and the rendered manifests checked
by the real API server (its schemas, the CRDs' schemas, admission)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from e2e.kube import LocalCluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "modelpilot"
GOLDEN = Path(__file__).parent / "golden"

FULL_VALUES = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.com/modelpilot/operator", "tag": "0.1.0"},
    "operator": {
        "watchNamespaces": ["ml", "ml-staging"],
        "logLevel": "debug",
        "resyncPeriod": "2m",
        "prometheus": {
            "url": "https://prometheus.monitoring.svc:9090",
            "bearerTokenSecret": "prom-token",
        },
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prom"}}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prom"}, "errorRatio": 0.02},
    "dashboards": {"namespace": "monitoring"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
}


def helm(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(cluster.bin / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(cluster: LocalCluster, values: dict[str, object] | None, tmp: Path) -> str:
    args = ["template", "mp", str(CHART), "--namespace", "modelpilot-system"]
    if values is not None:
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    return helm(cluster, *args).stdout


def test_lint_is_clean(local_cluster: LocalCluster) -> None:
    out = helm(local_cluster, "lint", "--strict", str(CHART)).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("case", ["default", "full"])
def test_render_matches_golden(local_cluster: LocalCluster, tmp_path: Path, case: str) -> None:
    rendered = render(local_cluster, FULL_VALUES if case == "full" else None, tmp_path)
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("MODELPILOT_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert rendered == golden.read_text(), (
        f"re-run with MODELPILOT_UPDATE_GOLDEN=1 to accept {golden}"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 0}, "minimum: got 0, want 1"),
        ({"operator": {"logLevel": "loud"}}, "value must be one of 'debug', 'info'"),
        ({"operator": {"resyncPeriod": "5 minutes"}}, "/operator/resyncPeriod"),
        ({"operator": {"prometheus": {"url": "prometheus:9090"}}}, "/operator/prometheus/url"),
        ({"metrics": {"port": 70000}}, "maximum: got 70,000, want 65,535"),
        ({"operatr": {}}, "additional properties 'operatr' not allowed"),
    ],
    ids=["replicas", "log-level", "duration", "url", "port", "typo"],
)
def test_values_schema_rejects_wrong_values(
    local_cluster: LocalCluster, tmp_path: Path, values: dict[str, object], message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = helm(local_cluster, "template", "mp", str(CHART), "--values", str(path), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


@pytest.mark.parametrize("case", ["default", "full"])
def test_api_server_accepts_every_rendered_object(
    local_cluster: LocalCluster, namespace: str, tmp_path: Path, case: str
) -> None:
    """Server-side dry run: the real API server validates every object against its schema
    (core kinds, and the installed CRDs for ServiceMonitor and PrometheusRule)."""
    local_cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    values: dict[str, object] = {**(FULL_VALUES if case == "full" else {})}
    if case == "full":
        values["operator"] = {**FULL_VALUES["operator"], "watchNamespaces": [namespace]}  # type: ignore[dict-item]
        values["dashboards"] = {"namespace": namespace}
    docs = [d for d in yaml.safe_load_all(render(local_cluster, values, tmp_path)) if d]
    for doc in docs:
        if doc["metadata"].get("namespace") == "modelpilot-system":
            doc["metadata"]["namespace"] = namespace
    text = yaml.safe_dump_all(docs)
    proc = local_cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=text, check=False
    )
    assert proc.returncode == 0, proc.stderr
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ConfigMap"} <= kinds
    if case == "full":
        assert {"ServiceMonitor", "PrometheusRule", "Role", "RoleBinding"} <= kinds
