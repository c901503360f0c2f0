"""Pods on the local node run as real processes, with real addresses, probes and metrics.

Uses the ``modelpilot/testserver`` image, which the node agent maps to a small Python
HTTP server shipped in ``e2e/``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import NODE_NAME, PROMETHEUS_PORT, net_plan, pod_cidr, pod_processes
from e2e.kube import LocalCluster, wait_for

pytestmark = pytest.mark.integration

IMAGE = "registry.example.com/modelpilot/testserver:0.1"


def http_get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def apply(local_cluster: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    stdin = "\n".join(json.dumps(o) for o in objects)
    local_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=stdin)


def server_container(**extra: Any) -> dict[str, Any]:
    return {
        "name": "server",
        "image": IMAGE,
        "args": ["--port", "8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
        **extra,
    }


def server_deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "8080",
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [server_container()],
                },
            },
        },
    }


def pods(local_cluster: LocalCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    found = local_cluster.get("pods", "-n", namespace, "-l", selector) or {}
    items: list[dict[str, Any]] = found.get("items", [])
    return items


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def ready_pods(
    local_cluster: LocalCluster, namespace: str, selector: str, count: int
) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        items = [
            p
            for p in pods(local_cluster, namespace, selector)
            if not p["metadata"].get("deletionTimestamp")
        ]
        if len(items) == count and all(ready(p) for p in items):
            return items
        return None

    return wait_for(f"{count} ready pods ({selector})", probe)


def env_from(name: str, **source: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": source}


def processes_of(pod: dict[str, Any]) -> list[int]:
    return pod_processes(f"MODELPILOT_POD_UID={pod['metadata']['uid']}".encode())


def test_node_is_ready_with_gpu_capacity(local_cluster: LocalCluster) -> None:
    node = local_cluster.get("node", NODE_NAME)
    assert node is not None
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    lease = local_cluster.get("lease", NODE_NAME, "-n", "kube-node-lease")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == NODE_NAME


def test_pod_gets_env_volumes_init_containers_and_its_own_address(
    local_cluster: LocalCluster, namespace: str
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "greeting"},
        "data": {"greeting": "hello from a ConfigMap"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "token"},
        "stringData": {"token": "s3cret"},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "volumes": [
                {"name": "config", "configMap": {"name": "greeting"}},
                {"name": "work", "emptyDir": {}},
            ],
            "initContainers": [
                {
                    "name": "copy",
                    "image": IMAGE,
                    "command": ["sh", "-c", "cat /etc/greeting/greeting > /work/message"],
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/greeting"},
                        {"name": "work", "mountPath": "/work"},
                    ],
                }
            ],
            "containers": [
                server_container(
                    args=["--port", "8080", "--message-file", "/work/message"],
                    volumeMounts=[{"name": "work", "mountPath": "/work"}],
                    env=[
                        env_from("TOKEN", secretKeyRef={"name": "token", "key": "token"}),
                        env_from("MY_IP", fieldRef={"fieldPath": "status.podIP"}),
                        env_from("MEM", resourceFieldRef={"resource": "limits.memory",
                                                          "divisor": "1Mi"}),
                    ],
                    resources={"limits": {"nvidia.com/gpu": "1", "memory": "1Gi"}},
                )
            ],
        },
    }  # fmt: skip
    apply(local_cluster, namespace, config, secret, pod)
    (running,) = ready_pods(local_cluster, namespace, "app=web", 1)
    status = running["status"]
    assert status["phase"] == "Running"
    assert running["spec"]["nodeName"] == NODE_NAME
    init = status["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0
    ip = status["podIP"]
    # The server binds 0.0.0.0 in the pod's own network namespace.
    answer = http_get(f"http://{ip}:8080/")
    assert answer == {"pod": "web", "address": "0.0.0.0:8080", "message": "hello from a ConfigMap"}
    (pid,) = processes_of(running)
    netns = Path("/var/run/netns") / net_plan().netns_name(running["metadata"]["uid"])
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns.stat().st_ino
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    environ = dict(
        entry.split("=", 1)
        for entry in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in entry
    )
    assert environ["TOKEN"] == "s3cret"
    assert environ["MY_IP"] == ip
    assert environ["MEM"] == "1024"


def test_unknown_image_fails_the_pod_with_a_reason(
    local_cluster: LocalCluster, namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nginx", "labels": {"app": "nginx"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "nginx:1.27"}]},
    }
    apply(local_cluster, namespace, pod)

    def failed() -> dict[str, Any] | None:
        found = local_cluster.get("pod", "nginx", "-n", namespace)
        return found if found and found["status"].get("phase") == "Failed" else None

    status = wait_for("the pod to fail", failed)["status"]
    waiting = status["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull"
    assert "not mapped" in waiting["message"]
    assert "nginx:1.27" in waiting["message"]


def test_container_exit_is_restarted_by_policy(local_cluster: LocalCluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "crash", "labels": {"app": "crash"}},
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", "exit 3"]}],
        },
    }
    apply(local_cluster, namespace, pod)

    def restarted() -> dict[str, Any] | None:
        found = local_cluster.get("pod", "crash", "-n", namespace)
        statuses = (found or {}).get("status", {}).get("containerStatuses") or []
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 1 else None

    status = wait_for("a restart", restarted)
    assert status["lastState"]["terminated"]["exitCode"] == 3


@pytest.fixture
def deployment_pods(local_cluster: LocalCluster, namespace: str) -> str:
    apply(local_cluster, namespace, server_deployment("fleet", 2))
    return "app=fleet"


def test_replicas_share_a_port_on_their_own_addresses_and_scale(
    local_cluster: LocalCluster, namespace: str, deployment_pods: str
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fleet"},
        "spec": {"selector": {"app": "fleet"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    apply(local_cluster, namespace, service)
    two = ready_pods(local_cluster, namespace, deployment_pods, 2)
    ips = sorted(p["status"]["podIP"] for p in two)
    assert len(set(ips)) == 2
    for pod in two:
        ip = pod["status"]["podIP"]
        assert http_get(f"http://{ip}:8080/")["pod"] == pod["metadata"]["name"]

    net = ipaddress.ip_network(pod_cidr())
    assert all(ipaddress.ip_address(ip) in net for ip in ips)
    assert net_plan().node_ip not in ips  # the node's

    # The Service's EndpointSlice lists both pods, and kube-proxy routes its ClusterIP to
    # them, from this machine and from inside a pod.
    def endpoints() -> list[str] | None:
        found = local_cluster.get(
            "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=fleet"
        )
        got = sorted(
            a
            for s in (found or {}).get("items", [])
            for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready")
            for a in e["addresses"]
        )
        return got if got == ips else None

    wait_for("the Service's EndpointSlice to list both pods", endpoints)
    service_obj = local_cluster.get("service", "fleet", "-n", namespace)
    assert service_obj is not None
    cluster_ip = service_obj["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(net_plan().service_cidr)
    names = {p["metadata"]["name"] for p in two}

    def answered_by_both(enter: list[str]) -> bool:
        seen = set()
        for _ in range(40):
            out = subprocess.run(
                [*enter, "curl", "-s", "-m", "3", f"http://{cluster_ip}/"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if out:
                seen.add(json.loads(out)["pod"])
            if seen == names:
                return True
        return False

    assert wait_for("the ClusterIP to reach both pods from the host", lambda: answered_by_both([]))
    inside = ["nsenter", f"--net=/var/run/netns/{net_plan().netns_name(two[0]['metadata']['uid'])}"]
    assert answered_by_both(inside), "a pod reaches the Service's pods through its ClusterIP"
    # A pod has no route off this machine.
    netns = net_plan().netns_name(two[0]["metadata"]["uid"])
    off = subprocess.run(
        ["ip", "-n", netns, "route", "get", "192.0.2.1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert off.returncode != 0
    assert "unreachable" in off.stderr

    local_cluster.kubectl("scale", "deployment", "fleet", "-n", namespace, "--replicas=3")
    three = ready_pods(local_cluster, namespace, deployment_pods, 3)
    assert all(processes_of(p) for p in three)

    local_cluster.kubectl("scale", "deployment", "fleet", "-n", namespace, "--replicas=1")
    (kept,) = ready_pods(local_cluster, namespace, deployment_pods, 1)
    removed = [p for p in three if p["metadata"]["uid"] != kept["metadata"]["uid"]]
    wait_for(
        "the scaled-down pods' processes to end",
        lambda: not any(processes_of(p) for p in removed),
    )
    assert processes_of(kept)

    local_cluster.kubectl("delete", "deployment", "fleet", "-n", namespace, "--wait=false")
    wait_for(
        "every pod to be gone",
        lambda: not pods(local_cluster, namespace, deployment_pods),
    )
    assert not any(processes_of(p) for p in three)


def prometheus_query(path: str, **params: str) -> dict[str, Any]:
    query = urllib.parse.urlencode(params)
    return http_get(f"http://127.0.0.1:{PROMETHEUS_PORT}{path}?{query}")


def test_prometheus_discovers_and_scrapes_annotated_pods(
    local_cluster: LocalCluster, namespace: str, deployment_pods: str
) -> None:
    local_cluster.cluster.start_prometheus()
    two = ready_pods(local_cluster, namespace, deployment_pods, 2)
    addresses = sorted(f"{p['status']['podIP']}:8080" for p in two)
    for address in addresses:
        http_get(f"http://{address}/")

    def targets_up() -> list[dict[str, Any]] | None:
        active = prometheus_query("/api/v1/targets", state="active")["data"]["activeTargets"]
        mine = [t for t in active if t["labels"].get("namespace") == namespace]
        up = sorted(t["labels"]["instance"] for t in mine if t["health"] == "up")
        return mine if up == addresses else None

    wait_for("Prometheus to scrape both pods", targets_up)

    def series() -> list[dict[str, Any]] | None:
        query = f'testserver_requests_total{{namespace="{namespace}"}} > 0'
        result: list[dict[str, Any]] = prometheus_query("/api/v1/query", query=query)["data"][
            "result"
        ]
        return result if len(result) == 2 else None

    found = wait_for("both pods' request counters", series)
    assert sorted(r["metric"]["pod"] for r in found) == sorted(p["metadata"]["name"] for p in two)
