"""The chart installed for real: the operator runs as a pod under the chart's ServiceAccount,
serves a ModelDeployment, rolls out a bad candidate under traffic, and every PromQL
expression of the dashboards and alerts is run against the real Prometheus that scrapes
the runtime pods and the operator.

One module-scoped scenario feeds all the checks (it takes a few minutes to build up).
The traffic comes from the mesh stand-in (e2e.traffic), which splits by the route weights
it reads back from the VirtualService: there is no Istio data plane here.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import PROMETHEUS_PORT, PROMETHEUS_URL_FROM_PODS
from e2e.demo import version_spec, write_models
from e2e.kube import LocalCluster, wait_for
from e2e.traffic import MeshDriver
from modelpilot_operator.k8s.client import ApiServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "modelpilot"
PROM = f"http://127.0.0.1:{PROMETHEUS_PORT}"
NAME = "fraud"


def prom_query(expr: str) -> list[dict[str, Any]]:
    url = f"{PROM}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def helm(cluster: LocalCluster, *args: str) -> str:
    proc = subprocess.run(
        [str(cluster.bin / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"helm {' '.join(args[:2])}: {proc.stderr}"
    return proc.stdout


@dataclass
class Scenario:
    namespace: str
    release: str
    cluster: LocalCluster


def _md(namespace: str, versions: list[dict[str, Any]], candidate: str | None) -> str:
    spec: dict[str, Any] = {"versions": versions, "stable": "v1", "routing": {"router": "istio"}}
    if candidate:
        spec["rollout"] = {
            "candidate": candidate,
            "steps": [{"weight": 50}],
            "analysis": {
                "interval": "10s",
                "minSamples": 20,
                "failureLimit": 3,
                "inconclusiveDeadline": "5m",
                "checks": [{"name": "error-rate", "builtin": "errorRate"}],
            },
            "promotion": "manual",
        }
    return yaml.safe_dump(
        {
            "apiVersion": "modelpilot.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": spec,
        }
    )


@pytest.fixture(scope="module")
def scenario(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    local_cluster.cluster.start_prometheus()
    ns = f"chart-{int(time.time()) % 100000}"
    release = f"mp-{ns}"
    local_cluster.kubectl("create", "namespace", ns)
    tmp = tmp_path_factory.mktemp("chart")
    # The chart's default topology: two operator replicas electing a leader on a Lease.
    values = {
        "operator": {
            "watchNamespaces": [ns],
            "logFormat": "plain",
            "resyncPeriod": "10s",
            "prometheus": {"url": PROMETHEUS_URL_FROM_PODS, "timeout": "5s"},
        },
        "dashboards": {"namespace": ns},
        "prometheusRule": {"enabled": True},
    }
    (tmp / "values.yaml").write_text(yaml.safe_dump(values))
    helm(local_cluster, "install", release, str(CHART), "-n", ns, "-f", str(tmp / "values.yaml"))
    models = write_models(tmp / "models")
    v1 = version_spec("v1", models["v1"])
    # v2 fails a third of its requests: the error-ratio alert and the rollback have a cause.
    v2 = version_spec("v2", models["v2"], {"MODELPILOT_FAULT_ERROR_RATIO": "0.35"})
    local_cluster.kubectl("apply", "--server-side", "-f", "-", stdin=_md(ns, [v1, v2], "v2"))
    api = ApiServer.from_environment()
    driver = MeshDriver(api, ns, NAME, rate=15)
    try:
        wait_for(
            "both versions to have Ready pods",
            lambda: driver.refresh() or len(driver._endpoints) == 2,  # type: ignore[func-returns-value]
            timeout=300,
            interval=2,
        )
        driver.start()
        wait_for(
            "the rollout to roll the bad candidate back",
            lambda: (
                (local_cluster.get("modeldeployment", NAME, "-n", ns) or {})
                .get("status", {})
                .get("phase")
                == "RolledBack"
            ),
            timeout=420,
            interval=3,
        )
        # Rates over the dashboards' window need a few scrapes after the decision.
        time.sleep(20)
        yield Scenario(ns, release, local_cluster)
    finally:
        driver.stop()
        subprocess.run(
            [
                str(local_cluster.bin / "helm"),
                f"--kubeconfig={local_cluster.kubeconfig}",
                "uninstall",
                release,
                "-n",
                ns,
            ],
            capture_output=True,
            check=False,
        )
        local_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_operator_runs_under_the_charts_service_account(scenario: Scenario) -> None:
    pods = scenario.cluster.get(
        "pods", "-n", scenario.namespace, "-l", "app.kubernetes.io/component=operator"
    )
    assert pods is not None
    assert pods["items"]
    pod = pods["items"][0]
    assert pod["spec"]["serviceAccountName"] == f"{scenario.release}-modelpilot"
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])


def test_rollback_is_visible_in_status_and_events(scenario: Scenario) -> None:
    md = scenario.cluster.get("modeldeployment", NAME, "-n", scenario.namespace)
    assert md is not None
    status = md["status"]
    assert status["phase"] == "RolledBack"
    assert status["weights"].get("v2", 0) == 0
    assert any(r["verdict"] == "fail" for r in status["analysis"])
    events = scenario.cluster.get("events", "-n", scenario.namespace)
    assert events is not None
    reasons = {e["reason"] for e in events["items"]}
    assert reasons & {"RolledBack", "RollbackStarted", "AnalysisFailed"}, reasons


def _dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted(CHART.glob("dashboards/*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.stem}: {panel['title']}", target["expr"]))
    return out


def _substitute(expr: str, ns: str) -> str:
    return (
        expr.replace("$namespace", ns)
        .replace("$model", NAME)
        .replace("$name", NAME)
        .replace("$__rate_interval", "1m")
    )


# The phase panel keeps only the current phase (== 1); the verdict panel only intervals in
# the window: both return data in this scenario too.
@pytest.mark.parametrize(
    ("panel", "expr"), _dashboard_exprs(), ids=[p for p, _ in _dashboard_exprs()]
)
def test_every_dashboard_query_returns_data(scenario: Scenario, panel: str, expr: str) -> None:
    if "modelpilot_rollout_verdicts_total" in expr:
        expr = expr.replace("[1m]", "[10m]")
    result = prom_query(_substitute(expr, scenario.namespace))
    assert result, f"{panel}: no data for {expr}"


def test_dashboard_variables_list_the_model(scenario: Scenario) -> None:
    namespaces = prom_query("group by (namespace) (modelpilot_model_ready)")
    assert scenario.namespace in {r["metric"]["namespace"] for r in namespaces}


def _alert_rules(scenario: Scenario) -> dict[str, str]:
    rule = scenario.cluster.get("prometheusrule", "-n", scenario.namespace)
    assert rule is not None
    assert rule["items"]
    return {r["alert"]: r["expr"] for g in rule["items"][0]["spec"]["groups"] for r in g["rules"]}


def _firing(expr: str, ns: str) -> list[dict[str, str]]:
    """Series the rule's expression returns for this test's namespace (other tests share
    Prometheus; every rule keeps the namespace label)."""
    return [r["metric"] for r in prom_query(expr) if r["metric"].get("namespace") == ns]


def test_error_ratio_alert_fires_for_the_bad_version_only(scenario: Scenario) -> None:
    firing = _firing(_alert_rules(scenario)["ModelErrorRatioHigh"], scenario.namespace)
    assert {m["version"] for m in firing} == {"v2"}


def test_rollout_failed_alert_fires_after_the_rollback(scenario: Scenario) -> None:
    firing = _firing(_alert_rules(scenario)["ModelRolloutFailed"], scenario.namespace)
    assert {m["name"] for m in firing} == {NAME}


@pytest.mark.parametrize(
    "alert",
    ["ModelVersionNotReady", "ModelLatencyP99High", "ModelRequestsRejected", "ModelRolloutStuck"],
)
def test_quiet_alerts_stay_quiet(scenario: Scenario, alert: str) -> None:
    """Nothing provokes these here (every pod ready, no slow or rejected requests, the
    rollout ended): their expressions must be empty, so they do not fire by accident."""
    assert _firing(_alert_rules(scenario)[alert], scenario.namespace) == []


def _lease(scenario: Scenario) -> dict[str, Any]:
    lease = scenario.cluster.get("lease", "modelpilot-operator", "-n", scenario.namespace)
    assert lease is not None, "the operator replicas elect a leader on a Lease"
    return dict(lease["spec"])


def _operator_pods(scenario: Scenario) -> list[str]:
    pods = scenario.cluster.get(
        "pods", "-n", scenario.namespace, "-l", "app.kubernetes.io/component=operator"
    )
    assert pods is not None
    return [
        p["metadata"]["name"]
        for p in pods["items"]
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"
    ]


def test_killing_the_leader_hands_over_to_another_replica(scenario: Scenario) -> None:
    """Default values run two replicas: one holds the Lease and acts; when it dies another
    replica takes the Lease once it expires and repairs what changed meanwhile. That may be
    the surviving replica or the one the ReplicaSet starts in the dead one's place: both
    retry every few seconds, and whichever asks first after the expiry wins."""
    pods = _operator_pods(scenario)
    assert len(pods) == 2, pods
    before = _lease(scenario)
    leader = before["holderIdentity"]
    assert leader in pods
    scenario.cluster.kubectl(
        "delete", "pod", leader, "-n", scenario.namespace, "--grace-period=0", "--force"
    )
    # A child removed while the Lease changes hands: only a leader puts it back.
    scenario.cluster.kubectl("delete", "service", f"{NAME}-v1", "-n", scenario.namespace)
    wait_for(
        "another replica to take the Lease",
        lambda: _lease(scenario).get("holderIdentity") not in ("", leader, None),
        timeout=120,
        interval=1,
    )
    after = _lease(scenario)
    assert after["holderIdentity"] in _operator_pods(scenario)
    assert int(after.get("leaseTransitions") or 0) > int(before.get("leaseTransitions") or 0)
    wait_for(
        "the new leader to repair the deleted Service",
        lambda: scenario.cluster.get("service", f"{NAME}-v1", "-n", scenario.namespace) is not None,
        timeout=120,
        interval=2,
    )


def test_helm_upgrade_rolls_the_operator_and_keeps_serving(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Last in this module: an upgrade with a changed setting rolls the operator's pod, and
    the ModelDeployment stays as the operator left it."""
    values = {
        "replicaCount": 1,
        "operator": {
            "watchNamespaces": [scenario.namespace],
            "logFormat": "plain",
            "logLevel": "debug",
            "resyncPeriod": "15s",
            "prometheus": {"url": PROMETHEUS_URL_FROM_PODS, "timeout": "5s"},
        },
        "dashboards": {"namespace": scenario.namespace},
        "prometheusRule": {"enabled": True},
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    helm(
        scenario.cluster,
        "upgrade",
        scenario.release,
        str(CHART),
        "-n",
        scenario.namespace,
        "-f",
        str(tmp_path / "values.yaml"),
        "--wait",
        "--timeout",
        "3m",
    )
    deploy = scenario.cluster.get(
        "deployment", f"{scenario.release}-modelpilot", "-n", scenario.namespace
    )
    assert deploy is not None
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELPILOT_LOG_LEVEL"] == "debug"
    assert env["MODELPILOT_RESYNC_PERIOD"] == "15s"
    assert deploy["status"].get("readyReplicas") == 1
    history = helm(scenario.cluster, "history", scenario.release, "-n", scenario.namespace)
    assert "upgrade complete" in history.lower() or "deployed" in history
    md = scenario.cluster.get("modeldeployment", NAME, "-n", scenario.namespace)
    assert md is not None
    assert md["status"]["phase"] == "RolledBack"
