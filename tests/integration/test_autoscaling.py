"""Resource metrics end to end: the node agent's kubelet API, metrics-server, `kubectl top`,
`kubectl logs`, and the controller-manager's HPA scaling a runtime Deployment 1 -> N -> 1.

The load goes to the runtime's ClusterIP Service, through kube-proxy. kube-proxy runs in
cluster 0 only (its nftables table has a fixed name, see :mod:`e2e.podnet`); on another
local cluster the load goes to the Service's ready endpoints from its EndpointSlices,
spread the way kube-proxy would, one connection per request.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from e2e import images
from e2e.cluster import net_plan, pod_processes, rss_bytes
from e2e.kube import LocalCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TESTSERVER = "registry.example.com/modelpilot/testserver:0.1"
RUNTIME = "ghcr.io/modelpilot/runtime:0.1.0"
MAX_REPLICAS = 4
# The runtime serves the tiny model at well under a millicore-second a request: a small
# request lets modest load put it far over the target.
CPU_REQUEST = "20m"
CPU_TARGET = 50  # percent of the request
LOAD_THREADS = 3
# Between a thread's requests: some 100 requests a second in all, a few times what one pod
# serves within its CPU target, and modest on a machine of two shared cores.
REQUEST_PAUSE = 0.02
# `kubectl top` numbers: "12m", "1" (cores), "34Mi".
QUANTITY = re.compile(r"^(\d+)(m|Mi|Ki|Gi)?$")


def apply(local_cluster: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    stdin = "\n".join(json.dumps(o) for o in objects)
    local_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=stdin)


def metrics_api_available(local_cluster: LocalCluster) -> bool:
    found = local_cluster.get("apiservice", "v1beta1.metrics.k8s.io") or {}
    conditions = found.get("status", {}).get("conditions") or []
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def metrics_server(local_cluster: LocalCluster) -> None:
    """metrics.k8s.io served by the cluster's metrics-server (`up` starts it, and refuses a
    build without it)."""
    proc = local_cluster.cluster.process("metrics-server")
    assert proc is not None, "`up` did not start metrics-server"
    assert proc.alive(), "metrics-server exited"
    wait_for(
        "the metrics.k8s.io APIService to be Available",
        lambda: metrics_api_available(local_cluster),
    )


def quantity(text: str) -> float:
    """A `kubectl top` CPU value in millicores or memory value in MiB."""
    m = QUANTITY.match(text)
    assert m, f"unexpected quantity {text!r}"
    value, unit = float(m.group(1)), m.group(2) or ""
    return {"": value * 1000, "m": value, "Ki": value / 1024, "Mi": value, "Gi": value * 1024}[unit]


def top_containers(
    local_cluster: LocalCluster, namespace: str, pod: str
) -> dict[str, tuple[float, float]] | None:
    """`kubectl top pod --containers`: {container: (millicores, MiB)}, None until served."""
    proc = local_cluster.kubectl(
        "top", "pod", pod, "-n", namespace, "--containers", "--no-headers", check=False
    )
    if proc.returncode != 0:
        return None
    found = {}
    for line in proc.stdout.splitlines():
        _pod, container, cpu, mem = line.split()
        found[container] = (quantity(cpu), quantity(mem))
    return found or None


def test_kubectl_logs_and_top(
    local_cluster: LocalCluster, namespace: str, metrics_server: None
) -> None:
    # One container burns about a fifth of a core (20 ms of CPU every 100 ms), the other
    # sleeps; both print what `kubectl logs` must return.
    burn = (
        "import sys, time\n"
        "print('burner ready', flush=True)\n"
        "for i in range(3): print(f'line {i}', flush=True)\n"
        "while True:\n"
        "    end = time.process_time() + 0.02\n"
        "    while time.process_time() < end: pass\n"
        "    time.sleep(0.08)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "burner"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "burn", "image": TESTSERVER, "command": ["python", "-c", burn]},
                {
                    "name": "idle",
                    "image": TESTSERVER,
                    "command": ["sh", "-c", "echo idle here; exec sleep 3600"],
                },
            ],
        },
    }
    apply(local_cluster, namespace, pod)
    local_cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Ready", "pod/burner", "--timeout=120s"
    )

    def logs(*args: str) -> str | None:
        proc = local_cluster.kubectl("logs", "-n", namespace, "burner", *args, check=False)
        return proc.stdout if proc.returncode == 0 and proc.stdout else None

    out = wait_for("the burner's output", lambda: logs("-c", "burn"))
    assert out.splitlines()[:4] == ["burner ready", "line 0", "line 1", "line 2"]
    assert logs("-c", "burn", "--tail=1") == "line 2\n"
    assert logs("-c", "idle") == "idle here\n"
    # Follow ends when the caller stops listening; what was there comes first.
    follow = local_cluster.kubectl(
        "logs", "-n", namespace, "burner", "-c", "idle", "-f", "--request-timeout=3s", check=False
    )
    assert follow.stdout.startswith("idle here\n")

    def both() -> dict[str, tuple[float, float]] | None:
        found = top_containers(local_cluster, namespace, "burner")
        return found if found and len(found) == 2 else None

    top = wait_for("`kubectl top` for both containers", both, timeout=90)
    burn_cpu, burn_mem = top["burn"]
    idle_cpu, idle_mem = top["idle"]
    print(
        f"\nkubectl top: burn {burn_cpu:.0f}m {burn_mem:.0f}Mi, "
        f"idle {idle_cpu:.0f}m {idle_mem:.0f}Mi"
    )
    # About 200m on an idle machine; less when the machine's cores are busy elsewhere.
    assert 40 <= burn_cpu <= 400
    assert idle_cpu <= 10
    # The working set is the processes' resident memory.
    obj = local_cluster.get("pod", "burner", "-n", namespace)
    assert obj is not None
    rss = (
        sum(
            rss_bytes(pid)
            for pid in pod_processes(f"MODELPILOT_POD_UID={obj['metadata']['uid']}".encode())
        )
        / 2**20
    )
    assert 0.5 * rss <= burn_mem + idle_mem <= 1.5 * rss
    nodes = local_cluster.kubectl("top", "node", "--no-headers").stdout.split()
    assert quantity(nodes[1]) > 0
    assert nodes[3].endswith("Mi")


def runtime_objects() -> list[dict[str, Any]]:
    labels = {"app": "scaled"}
    models = {"name": "models", "mountPath": "/mnt/models"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "scaled", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "volumes": [{"name": "models", "emptyDir": {}}],
                    "initContainers": [
                        {
                            "name": "sample-model",
                            "image": RUNTIME,
                            "command": ["python", "-m", "modelpilot_runtime.samples"],
                            "args": ["/mnt/models", "--models", "tiny"],
                            "volumeMounts": [models],
                        }
                    ],
                    "containers": [
                        {
                            "name": "runtime",
                            "image": RUNTIME,
                            "args": ["serve", "--model-repository", "/mnt/models"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "volumeMounts": [models],
                            "readinessProbe": {
                                "httpGet": {"path": "/v2/health/ready", "port": "http"},
                                "periodSeconds": 2,
                            },
                            "resources": {"requests": {"cpu": CPU_REQUEST, "memory": "64Mi"}},
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "scaled"},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "scaled"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scaled"},
            "minReplicas": 1,
            "maxReplicas": MAX_REPLICAS,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": CPU_TARGET},
                    },
                }
            ],
            # Scale down as soon as the load is gone (the default waits five minutes).
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}},
        },
    }
    return [deployment, service, hpa]


INFER = json.dumps(
    {
        "inputs": [
            {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}
        ]
    }
).encode()


class Load:
    """Threads that send inference requests to the Service, a new connection each."""

    def __init__(self, local_cluster: LocalCluster, namespace: str) -> None:
        self.local_cluster = local_cluster
        self.namespace = namespace
        self.stop = threading.Event()
        self.sent = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.targets: list[str] = []
        self.through_service = net_plan().runs_kube_proxy
        self.threads: list[threading.Thread] = []

    def _refresh_targets(self) -> None:
        """The Service's address, or its ready endpoints where no kube-proxy routes it."""
        if self.through_service:
            svc = self.local_cluster.get("service", "scaled", "-n", self.namespace)
            assert svc is not None
            self.targets = [f"{svc['spec']['clusterIP']}:80"]
            return
        found = self.local_cluster.get(
            "endpointslices", "-n", self.namespace, "-l", "kubernetes.io/service-name=scaled"
        )
        self.targets = sorted(
            f"{a}:8080"
            for s in (found or {}).get("items", [])
            for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready")
            for a in e["addresses"]
        )

    def _refresher(self) -> None:
        while not self.stop.wait(1.0):
            self._refresh_targets()

    def _worker(self, index: int) -> None:
        n = index
        while not self.stop.is_set():
            targets = self.targets
            if not targets:
                self.stop.wait(0.2)
                continue
            target = targets[n % len(targets)]
            n += 1
            req = urllib.request.Request(
                f"http://{target}/v2/models/tiny/infer",
                data=INFER,
                headers={"Content-Type": "application/json", "Connection": "close"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
                with self.lock:
                    self.sent += 1
                self.stop.wait(REQUEST_PAUSE)
            except (OSError, urllib.error.URLError):
                with self.lock:
                    self.failed += 1
                self.stop.wait(0.1)

    def __enter__(self) -> Load:
        self._refresh_targets()
        self.threads = [
            threading.Thread(target=self._worker, args=(i,), daemon=True)
            for i in range(LOAD_THREADS)
        ]
        if not self.through_service:
            self.threads.append(threading.Thread(target=self._refresher, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def hpa_state(local_cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    found = local_cluster.get("hpa", "scaled", "-n", namespace) or {}
    status: dict[str, Any] = found.get("status", {})
    return status


def ready_replicas(local_cluster: LocalCluster, namespace: str) -> int:
    found = local_cluster.get("deployment", "scaled", "-n", namespace) or {}
    return int(found.get("status", {}).get("readyReplicas") or 0)


def current_cpu(status: dict[str, Any]) -> str:
    for m in status.get("currentMetrics") or []:
        if m.get("type") == "Resource":
            return str(m["resource"]["current"].get("averageUtilization"))
    return "?"


def test_hpa_scales_a_runtime_deployment_up_under_load_and_back_down(
    local_cluster: LocalCluster, namespace: str, metrics_server: None
) -> None:
    assert images.lookup(RUNTIME) is not None, "modelpilot-runtime is not installed"
    apply(local_cluster, namespace, *runtime_objects())
    wait_for(
        "one ready runtime pod", lambda: ready_replicas(local_cluster, namespace) == 1, timeout=180
    )

    # Idle, the HPA reads the pod's CPU and keeps one replica.
    wait_for(
        "the HPA to read the pod's CPU",
        lambda: current_cpu(hpa_state(local_cluster, namespace)) not in ("?", "None"),
        timeout=120,
    )
    idle = hpa_state(local_cluster, namespace)
    print(f"\nidle: cpu {current_cpu(idle)}% of the request, {idle.get('desiredReplicas')} replica")
    assert idle.get("desiredReplicas") == 1, idle

    started = time.monotonic()
    up_at = None
    peak = 1
    with Load(local_cluster, namespace) as load:
        # Until more than one replica is ready and the HPA has settled on a count.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = hpa_state(local_cluster, namespace)
            desired = int(status.get("desiredReplicas") or 0)
            if desired > 1 and up_at is None:
                up_at = time.monotonic() - started
                print(
                    f"HPA asked for {desired} replicas {up_at:.0f}s into the load "
                    f"(cpu {current_cpu(status)}% of the request)"
                )
            ready = ready_replicas(local_cluster, namespace)
            peak = max(peak, ready)
            if ready > 1 and ready == desired == int(status.get("currentReplicas") or 0):
                break
            time.sleep(2)
        scaled_up = time.monotonic() - started
        status = hpa_state(local_cluster, namespace)
        print(
            f"{peak} ready replicas {scaled_up:.0f}s into the load (cpu {current_cpu(status)}% "
            f"of the request); {load.sent} requests, {load.failed} failed"
        )
        assert peak > 1, status
    assert load.sent > 0
    assert load.failed <= max(10, load.sent // 20)

    stopped = time.monotonic()
    wait_for(
        "the HPA to scale back to one replica",
        lambda: (
            (hpa_state(local_cluster, namespace).get("desiredReplicas") == 1)
            and ready_replicas(local_cluster, namespace) == 1
        ),
        timeout=240,
        interval=2,
    )
    print(
        f"back to 1 replica {time.monotonic() - stopped:.0f}s after the load stopped "
        f"(cpu {current_cpu(hpa_state(local_cluster, namespace))}%)"
    )
    local_cluster.kubectl("delete", "deployment", "scaled", "-n", namespace, "--wait=false")
