"""The model runtime as a plain Deployment on the local node, scraped by Prometheus.

The image ``modelpilot/runtime`` runs the installed ``modelpilot-runtime``; an init
container of the same image writes a sample model into an emptyDir first.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import pytest

from e2e import images
from e2e.cluster import PROMETHEUS_PORT, pod_processes
from e2e.kube import LocalCluster, wait_for

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/modelpilot/runtime:0.1.0"
LABELS = {"app": "fraud", "version": "v1"}


def runtime_deployment(replicas: int) -> dict[str, Any]:
    models = {"name": "models", "mountPath": "/mnt/models"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "fraud-v1", "labels": LABELS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": LABELS},
            "template": {
                "metadata": {
                    "labels": LABELS,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "8080",
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "volumes": [{"name": "models", "emptyDir": {}}],
                    "initContainers": [
                        {
                            "name": "sample-model",
                            "image": IMAGE,
                            "command": ["python", "-m", "modelpilot_runtime.samples"],
                            "args": ["/mnt/models", "--models", "tiny"],
                            "volumeMounts": [models],
                        }
                    ],
                    "containers": [
                        {
                            "name": "runtime",
                            "image": IMAGE,
                            "args": ["serve", "--model-repository", "/mnt/models"],
                            "ports": [
                                {"name": "http", "containerPort": 8080},
                                {"name": "grpc", "containerPort": 8081},
                            ],
                            "volumeMounts": [models],
                            "readinessProbe": {
                                "httpGet": {"path": "/v2/health/ready", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": "http"},
                                "periodSeconds": 5,
                            },
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def ready_pods(local_cluster: LocalCluster, namespace: str, count: int) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        found = local_cluster.get("pods", "-n", namespace, "-l", "app=fraud") or {}
        live = [p for p in found.get("items", []) if not p["metadata"].get("deletionTimestamp")]
        ready = [
            p
            for p in live
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions") or []
            )
        ]
        return ready if len(live) == count and len(ready) == count else None

    return wait_for(f"{count} ready runtime pods", probe, timeout=180)


def infer(ip: str) -> dict[str, Any]:
    body = {
        "inputs": [
            {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}
        ]
    }
    req = urllib.request.Request(
        f"http://{ip}:8080/v2/models/tiny/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def prometheus(path: str, **params: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def processes(pod: dict[str, Any]) -> list[int]:
    return pod_processes(f"MODELPILOT_POD_UID={pod['metadata']['uid']}".encode())


def test_runtime_deployment_serves_scales_and_is_scraped(
    local_cluster: LocalCluster, namespace: str
) -> None:
    assert images.lookup(IMAGE) is not None, "modelpilot-runtime is not installed"
    local_cluster.cluster.start_prometheus()
    local_cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=json.dumps(runtime_deployment(2))
    )
    two = ready_pods(local_cluster, namespace, 2)
    ips = sorted(p["status"]["podIP"] for p in two)
    assert len(set(ips)) == 2
    for ip in ips:
        answer = infer(ip)
        assert answer["model_name"] == "tiny"
        (output,) = answer["outputs"]
        assert output["shape"] == [1, 3]
        assert abs(sum(output["data"]) - 1.0) < 1e-4  # softmax probabilities

    def scraped() -> list[dict[str, Any]] | None:
        query = f'sum by (pod) (modelpilot_inference_requests_total{{namespace="{namespace}"}})'
        result: list[dict[str, Any]] = prometheus("/api/v1/query", query=query)["data"]["result"]
        return result if len(result) == 2 else None

    series = wait_for("the runtime metrics of both pods in Prometheus", scraped)
    assert sorted(s["metric"]["pod"] for s in series) == sorted(p["metadata"]["name"] for p in two)
    targets = prometheus("/api/v1/targets", state="active")["data"]["activeTargets"]
    up = sorted(
        t["labels"]["instance"]
        for t in targets
        if t["labels"].get("namespace") == namespace and t["health"] == "up"
    )
    assert up == [f"{ip}:8080" for ip in ips]

    local_cluster.kubectl("scale", "deployment", "fraud-v1", "-n", namespace, "--replicas=3")
    three = ready_pods(local_cluster, namespace, 3)
    assert all(processes(p) for p in three)

    local_cluster.kubectl("scale", "deployment", "fraud-v1", "-n", namespace, "--replicas=1")
    (kept,) = ready_pods(local_cluster, namespace, 1)
    gone = [p for p in three if p["metadata"]["uid"] != kept["metadata"]["uid"]]
    wait_for("the removed replicas' processes to end", lambda: not any(map(processes, gone)))
    assert infer(kept["status"]["podIP"])["model_name"] == "tiny"

    local_cluster.kubectl("delete", "deployment", "fraud-v1", "-n", namespace, "--wait=false")

    def no_pods() -> bool:
        found = local_cluster.get("pods", "-n", namespace, "-l", "app=fraud") or {}
        return not found.get("items")

    wait_for("every runtime pod to be deleted", no_pods)
    assert not any(processes(p) for p in three)
