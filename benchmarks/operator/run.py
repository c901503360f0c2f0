"""Operator at scale on the local cluster: N ModelDeployments with two versions each.

    .venv/bin/python benchmarks/operator/run.py [--count 300] [--resync 60s] [--write]

What it measures (the local cluster must be running: ``python -m e2e.cluster up``):

1. create -> all children applied: the time from sending each ModelDeployment's create to
   the moment the last of its 8 children (2 Deployments, 2 version Services, the model's
   Service, VirtualService, DestinationRule, ServiceMonitor) is seen on a watch; p50, p99;
2. API writes per steady-state resync: over two resync periods once everything settled,
   the operator's own count of write requests (``modelpilot_api_writes_total``, no-op
   applies included) divided by the resyncs it ran, and, independently, the changes the
   API server saw (watch MODIFIED events on the ModelDeployments and their children);
3. the operator's RSS at the end;
4. restart: the operator is killed (SIGKILL) and, while it is down, every ModelDeployment's
   v2 gets a new batch size; the time from starting it again to every v2 Deployment
   carrying the new size, and to the statuses reporting the new generation.

Pods never start: the benchmark namespace has a ResourceQuota of 0 pods, so the
ReplicaSets exist but cannot create pods (the runtime is not what is measured here, and
600 runtime processes would not fit on the machine). 900 Services need more ClusterIPs than a
cluster started with a /24 service range holds; then the run adds a ServiceCIDR
(10.1.0.0/20) for its duration. The namespace (and that ServiceCIDR) are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2e.cluster import Api, Cluster  # noqa: E402
from e2e.kube import verify_local, wait_for  # noqa: E402
from modelpilot_operator.api.v1alpha1 import parse_duration  # noqa: E402

HERE = Path(__file__).resolve().parent
IMAGE = "ghcr.io/modelpilot/runtime:bench"
CHILD_KINDS = {
    "deployments": "/apis/apps/v1",
    "services": "/api/v1",
    "virtualservices": "/apis/networking.istio.io/v1",
    "destinationrules": "/apis/networking.istio.io/v1",
    "servicemonitors": "/apis/monitoring.coreos.com/v1",
}
MD_PATH = "/apis/modelpilot.io/v1alpha1"
CHILDREN_PER_MD = 8
SERVICE_CIDR: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "ServiceCIDR",
    "metadata": {"name": "modelpilot-operator-bench"},
    "spec": {"cidrs": ["10.1.0.0/20"]},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Watcher:
    """Watches one collection in the namespace from a thread; remembers when each object
    was first seen and every modification with its time."""

    api: Api
    path: str
    kind: str
    first_seen: dict[str, float] = field(default_factory=dict)
    modified: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        rv = ""
        while not self.stop.is_set():
            listed = self.api.get_json(f"{self.path}?limit=1")
            rv = rv or str((listed or {}).get("metadata", {}).get("resourceVersion", ""))
            url = f"{self.path}?watch=1&timeoutSeconds=600&resourceVersion={rv}"
            self.ready.set()
            try:
                for event in self.api.watch(url, timeout=700):
                    now = time.monotonic()
                    obj = event.get("object", {})
                    meta = obj.get("metadata", {})
                    rv = str(meta.get("resourceVersion", rv))
                    name = str(meta.get("name", ""))
                    if event.get("type") == "ADDED":
                        self.first_seen.setdefault(name, now)
                    elif event.get("type") == "MODIFIED":
                        self.modified.append((now, name, obj))
                    if self.stop.is_set():
                        return
            except OSError:
                time.sleep(0.5)


def total(
    samples: list[tuple[str, dict[str, str], float]] | None, name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for n, have, v in samples or []
        if n == name and all(have.get(k) == x for k, x in labels.items())
    )


def served_requests(api: Api) -> float:
    """Every request the API server has served (``apiserver_request_total``, all clients;
    watches counted when they open)."""
    code, body = api.request("GET", "/metrics", timeout=30)
    if code != 200:
        return float("nan")
    out = 0.0
    for line in body.decode().splitlines():
        if line.startswith("apiserver_request_total{"):
            out += float(line.rpartition(" ")[2])
    return out


def managed_times(obj: dict[str, Any], managers: tuple[str, ...]) -> list[str]:
    return [
        str(m.get("time", ""))
        for m in obj.get("metadata", {}).get("managedFields") or []
        if m.get("manager") in managers
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    def __init__(self, namespace: str, kubeconfig: Path, resync: str, log: Path) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.resync = resync
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MODELPILOT_PROBE_PROVIDERS": "false",
            # One identity across the restart, as a container restarted in its pod.
            "MODELPILOT_LEADER_ID": f"bench-{self.namespace}",
        }
        cmd = [
            sys.executable,
            "-m",
            "modelpilot_operator.cli.main",
            "operator",
            "run",
            "-n",
            self.namespace,
            "--resync-period",
            self.resync,
            "--metrics-port",
            str(self.port),
            "--runtime-image",
            IMAGE,
            "--log-level",
            "warning",
        ]
        with self.log.open("ab") as out:
            started = time.monotonic()
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for("operator metrics endpoint", lambda: self.metrics() is not None, 120, 0.2)
        return started

    def metrics(self) -> list[tuple[str, dict[str, str], float]] | None:
        """The samples of /metrics: (name, labels, value)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        out = []
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, _, value = line.rpartition(" ")
            name, _, rest = key.partition("{")
            labels = {
                k: v.strip('"')
                for k, _, v in (p.partition("=") for p in rest.rstrip("}").split(",") if p)
            }
            out.append((name, labels, float(value)))
        return out

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


MODEL_URI = "file:///srv/models/{name}/{v}/"


def model_deployment(name: str, namespace: str, batch: int = 8) -> dict[str, Any]:
    def version(v: str, b: int) -> dict[str, Any]:
        return {
            "name": v,
            "model": {"storageUri": MODEL_URI.format(name=name, v=v)},
            "runtime": {"executionProviders": ["cpu"], "batching": {"maxBatchSize": b}},
            "resources": {"cpu": "100m", "memory": "256Mi"},
        }

    return {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "versions": [version("v1", 8), version("v2", batch)],
            "stable": "v1",
            "routing": {"router": "istio"},
        },
    }


def create_all(api: Api, namespace: str, names: list[str], rate: float = 0.0) -> dict[str, float]:
    """Creates from 4 threads (a client applying manifests in parallel), as fast as they
    go or, with ``rate``, at that many a second; the send times."""
    sent: dict[str, float] = {}
    path = f"{MD_PATH}/namespaces/{namespace}/modeldeployments"
    todo = list(names)
    lock = threading.Lock()
    start = time.monotonic()
    slots = iter(range(len(names)))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                name = todo.pop(0)
                slot = next(slots)
            if rate > 0:
                time.sleep(max(0.0, start + slot / rate - time.monotonic()))
            sent[name] = time.monotonic()
            code, body = api.request("POST", path, model_deployment(name, namespace), timeout=30)
            if code != 201:
                raise RuntimeError(f"create {name}: {code} {body[:200]!r}")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent


def children_of(name: str) -> list[tuple[str, str]]:
    return [
        ("deployments", f"{name}-v1"),
        ("deployments", f"{name}-v2"),
        ("services", f"{name}-v1"),
        ("services", f"{name}-v2"),
        ("services", name),
        ("virtualservices", name),
        ("destinationrules", name),
        ("servicemonitors", name),
    ]


def run(
    count: int, resync: str, out: Path, pods: bool = False, rate: float = 0.0
) -> dict[str, Any]:
    cluster = Cluster()
    if not cluster.ready():
        raise SystemExit("the local cluster is not running: python -m e2e.cluster up")
    verify_local(cluster)
    kubeconfig = cluster.layout.kubeconfig
    api = Api(cluster.layout)
    ns = f"bench-operator-{secrets.token_hex(3)}"
    results: dict[str, Any] = {
        "count": count,
        "resync": resync,
        "namespace": ns,
        "pods": pods,
        "rate": rate,
    }
    global MODEL_URI
    if pods:
        # Pods really start: every version serves the tiny sample model from a local folder.
        from modelpilot_runtime import samples

        models = out / "models"
        samples.main([str(models), "--models", "tiny"])
        MODEL_URI = f"file://{models}/tiny/1/"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    # Three Services per ModelDeployment: a cluster started with a /24 service range has
    # too few ClusterIPs, so the run then adds a range of its own (removed at the end).
    primary = api.get_json("/apis/networking.k8s.io/v1/servicecidrs/kubernetes") or {}
    prefix = min(int(c.split("/")[1]) for c in primary.get("spec", {}).get("cidrs", ["/0"]))
    extra_range = prefix > 20
    if extra_range:
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(SERVICE_CIDR))
    cluster.kubectl("create", "namespace", ns)
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods", "namespace": ns},
        "spec": {"hard": {"pods": "0"}},
    }
    if not pods:
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(quota))
    watchers = {
        kind: Watcher(api, f"{prefix}/namespaces/{ns}/{kind}", kind)
        for kind, prefix in {**CHILD_KINDS, "modeldeployments": MD_PATH}.items()
    }
    for w in watchers.values():
        w.start()
    for w in watchers.values():
        w.ready.wait(30)
    log = out / "operator.log"
    log.unlink(missing_ok=True)
    op = Operator(ns, kubeconfig, resync, log)
    period = parse_duration(resync)
    names = [f"model-{i:03d}" for i in range(count)]
    try:
        op.start()
        t0 = time.monotonic()
        sent = create_all(api, ns, names, rate)
        results["create_seconds"] = time.monotonic() - t0

        def all_children() -> bool:
            return all(n in watchers[k].first_seen for name in names for k, n in children_of(name))

        wait_for("every child applied", all_children, timeout=1800, interval=1)
        latency = [
            max(watchers[k].first_seen[n] for k, n in children_of(name)) - sent[name]
            for name in names
        ]
        done = max(watchers[k].first_seen[n] for name in names for k, n in children_of(name))
        results["children_applied"] = {
            "p50_s": percentile(latency, 0.5),
            "p99_s": percentile(latency, 0.99),
            "max_s": max(latency),
            "mean_s": statistics.fmean(latency),
            "all_s": done - t0,
        }
        results["latencies_s"] = sorted(latency)

        def statuses_current() -> bool:
            items = (api.get_json(f"{MD_PATH}/namespaces/{ns}/modeldeployments") or {}).get(
                "items", []
            )
            return len(items) == count and all(
                (i.get("status") or {}).get("observedGeneration") == i["metadata"]["generation"]
                for i in items
            )

        wait_for("every status current", statuses_current, timeout=1800, interval=2)
        results["status_current_s"] = time.monotonic() - t0

        # Steady state: once the events of the creation are worked off (no reconcile for
        # 10 s but the resyncs: fewer than one per object), two full resync periods.
        reconciles = "modelpilot_reconcile_total"

        def quiet() -> bool:
            first = total(op.metrics(), reconciles)
            time.sleep(10)
            return total(op.metrics(), reconciles) - first < count * 10 / period

        wait_for("child events worked off", quiet, timeout=900, interval=0)
        results["settled_s"] = time.monotonic() - t0
        before = op.metrics()
        served_before = served_requests(api)
        start_wall = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        mark = time.monotonic()
        time.sleep(2 * period)
        after = op.metrics()
        served = served_requests(api) - served_before - 2  # less this run's own /metrics
        end = time.monotonic()
        resyncs = total(after, reconciles) - total(before, reconciles)
        writes = total(after, "modelpilot_api_writes_total") - total(
            before, "modelpilot_api_writes_total"
        )
        requests = {
            verb: total(after, "modelpilot_api_requests_total", verb=verb)
            - total(before, "modelpilot_api_requests_total", verb=verb)
            for verb in ("GET", "PUT", "PATCH", "POST", "DELETE", "WATCH")
        }
        changed: dict[str, int] = {}
        for kind, w in watchers.items():
            mine = [
                (t, n, o)
                for t, n, o in w.modified
                if mark <= t <= end
                and (
                    kind == "modeldeployments"
                    or any(
                        m >= start_wall
                        for m in managed_times(o, ("modelpilot", "modelpilot-rollout"))
                    )
                )
            ]
            changed[kind] = len(mine)
        results["steady"] = {
            "window_s": end - mark,
            "resyncs": resyncs,
            "operator_write_requests": writes,
            "writes_per_resync": writes / resyncs if resyncs else float("nan"),
            "api_requests": requests,
            "api_server_requests_all_clients": served,
            "api_server_requests_per_object_minute": served / count / ((end - mark) / 60),
            "api_requests_per_object_minute": sum(requests.values()) / count / ((end - mark) / 60),
            "objects_changed_by_operator": changed,
            "reconciles_in_window": resyncs,
        }
        results["rss_mib"] = op.rss_mib()

        # Restart: killed, every v2 changed while it is down, started again.
        op.kill()
        patch = {"spec": model_deployment("x", ns, batch=16)["spec"]}
        for name in names:
            code, body = api.request(
                "PATCH",
                f"{MD_PATH}/namespaces/{ns}/modeldeployments/{name}",
                patch,
                timeout=30,
                content_type="application/merge-patch+json",
            )
            if code != 200:
                raise RuntimeError(f"patch {name}: {code} {body[:200]!r}")
        deps = watchers["deployments"]
        seen_mods = len(deps.modified)
        restarted = op.start()

        def v2_updated() -> dict[str, float]:
            found: dict[str, float] = {}
            for t, n, o in deps.modified[seen_mods:]:
                if not n.endswith("-v2") or n in found:
                    continue
                args = o["spec"]["template"]["spec"]["containers"][0]["args"]
                if args[args.index("--max-batch-size") + 1] == "16":
                    found[n] = t
            return found

        wait_for("every v2 re-rendered", lambda: len(v2_updated()) == count, 1800, 1)
        updated = sorted(t - restarted for t in v2_updated().values())
        wait_for("every status current", statuses_current, timeout=1800, interval=1)
        results["restart"] = {
            "all_v2_updated_s": updated[-1],
            "p50_v2_updated_s": percentile(updated, 0.5),
            "first_v2_updated_s": updated[0],
            "statuses_current_s": time.monotonic() - restarted,
        }
        results["rss_mib_after_restart"] = op.rss_mib()
    finally:
        # Deleted while the operator still runs: the design before the work queue held a
        # finalizer on each ModelDeployment that only a running operator takes off (this
        # harness also measures that design); the current one holds none.
        cluster.kubectl(
            "delete", "modeldeployments", "--all", "-n", ns, "--timeout=600s", check=False
        )
        op.stop()
        for w in watchers.values():
            w.stop.set()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if extra_range:
            name = SERVICE_CIDR["metadata"]["name"]
            cluster.kubectl("delete", "servicecidr", name, "--wait=false", check=False)
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = results["latencies_s"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))])
    ax.set_xlabel("seconds from create to all 8 children applied")
    ax.set_ylabel("fraction of ModelDeployments")
    ax.set_title(f"{results['count']} ModelDeployments x 2 versions, created from 4 threads")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--resync", default="60s", help="the operator's resync period")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--write", action="store_true", help="write results.json and the plot")
    parser.add_argument(
        "--pods", action="store_true", help="let the pods start (a runtime process each)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="creates per second (0: as fast as possible)"
    )
    parser.add_argument("--name", default="", help="results-NAME.json (with --write)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args.count, args.resync, args.out, args.pods, args.rate)
    summary = {k: v for k, v in results.items() if k != "latencies_s"}
    print(json.dumps(summary, indent=2))
    if args.write:
        stem = f"results-{args.name}" if args.name else "results"
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        try:
            plot(
                results,
                args.out / ("create-latency-pods.png" if args.pods else "create-latency.png"),
            )
        except ImportError:
            print("matplotlib is not installed: no plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
