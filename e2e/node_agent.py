"""The local cluster's node: ``python -m e2e.node_agent`` (started by ``up``).

Owns the Node object and its Lease, the pod address range and the pods bound to the
node. Like a kubelet it registers the Node (with a fake ``nvidia.com/gpu`` capacity so
GPU pods schedule), renews its Lease and Ready condition every few seconds, watches the
pods bound to it and hands each to an :class:`e2e.pods.PodRunner`.

Pod network: like a kubelet with a CNI configuration, the agent gives each pod a network
namespace and calls the CNI plugins to put it on the node's bridge with an address from
the pod range (see :mod:`e2e.podnet`); the pod's containers run inside that namespace.
The node's InternalIP is the bridge's address, where pods also reach the API server
(through the pod gateway, see :mod:`e2e.podgateway`).

Kubelet API: the agent serves the kubelet's HTTPS endpoint on the node's address
(resource metrics for metrics-server, container logs for ``kubectl logs``, see
:mod:`e2e.kubeletapi`) and publishes its port in the Node's
``status.daemonEndpoints.kubeletEndpoint``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import signal
import sys
import threading
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from e2e import build as buildmod
from e2e import kubeletapi, podnet, versions
from e2e.cluster import POD_MARKER, Api, Layout, net_plan
from e2e.kubeletapi import LogSource, RunningContainer
from e2e.pods import PodRunner, now

NODE_NAME = "modelpilot-local"
HEARTBEAT = 10.0
LEASE_SECONDS = 40
# Generous, like a large GPU box, so that pods rendered for production shapes schedule.
CAPACITY = {
    "cpu": "32",
    "memory": "128Gi",
    "pods": "110",
    "ephemeral-storage": "200Gi",
    "nvidia.com/gpu": "4",
}
SHUTDOWN_GRACE = 5.0
# Namespace, pod and container names (DNS labels and subdomains), for paths on disk.
NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def log(msg: str) -> None:
    print(f"{now()} {msg}", flush=True)


@dataclass
class AgentConfig:
    layout: Layout
    node_name: str = NODE_NAME
    plan: podnet.NetPlan = field(default_factory=net_plan)


class NodeAgent:
    """Registers the node, keeps it alive and runs its pods."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.layout = config.layout
        self.api = Api(self.layout, user="node")
        self.node = config.node_name
        self.stop = threading.Event()
        self.runners: dict[str, PodRunner] = {}
        self.lock = threading.Lock()
        self.plan = config.plan
        self.cidr = self.plan.pod_cidr
        self.network = podnet.PodNetwork(self.plan, buildmod.default_paths().cni, self.layout.root)
        self.network.write_config()
        self.pods_dir = self.layout.root / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            # In-cluster clients find the API server on the node's bridge address, where
            # the pod gateway relays to it (see e2e.podgateway).
            "KUBERNETES_SERVICE_HOST": self.plan.node_ip,
            "KUBERNETES_SERVICE_PORT": str(self.layout.ports.apiserver),
            # Marks every container process as this cluster's, for `down`'s last sweep.
            POD_MARKER: str(self.layout.root),
        }
        if os.environ.get("VIRTUAL_ENV"):
            self.base_env["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
        self.kubelet: kubeletapi.KubeletApi | None = None
        self.kubelet_port = 0
        pki = self.layout.pki
        if (pki / "kubelet.crt").exists():
            self.kubelet = kubeletapi.KubeletApi(
                self,
                kubeletapi.Authorizer(self.api, self.node),
                self.plan.node_ip,
                self.layout.ports.kubelet,
                pki / "kubelet.crt",
                pki / "kubelet.key",
                pki / "ca.crt",
            )
            self.kubelet_port = self.kubelet.port

    # --- node ---------------------------------------------------------------------------

    def _conditions(self) -> list[dict[str, Any]]:
        stamp = now()
        message = f"modelpilot node agent is posting ready status (pods on {self.cidr})"
        conds = [
            ("Ready", "True", "KubeletReady", message),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "enough memory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "enough disk"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "enough PIDs"),
        ]
        return [
            {
                "type": t,
                "status": s,
                "reason": r,
                "message": m,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": self.started,
            }
            for t, s, r, m in conds
        ]

    def _node_status(self) -> dict[str, Any]:
        return {
            "capacity": CAPACITY,
            "allocatable": CAPACITY,
            "conditions": self._conditions(),
            "addresses": [
                {"type": "InternalIP", "address": self.plan.node_ip},
                {"type": "Hostname", "address": self.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "modelpilot local node",
                "containerRuntimeVersion": "process://local",
                "kubeletVersion": versions.KUBERNETES,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        self.started = now()
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "modelpilot-local",
                    "nvidia.com/gpu.present": "true",
                },
            },
            "spec": {"podCIDR": self.cidr, "podCIDRs": [self.cidr]},
            "status": self._node_status(),
        }
        code, raw = self.api.request("POST", "/api/v1/nodes", body)
        if code not in (201, 409):
            raise RuntimeError(f"cannot register node {self.node}: {code} {raw[:300]!r}")
        self.heartbeat()
        log(f"node {self.node} registered; pod addresses from {self.cidr}")

    def heartbeat(self) -> None:
        status = {"status": self._node_status()}
        code, raw = self.api.request(
            "PATCH",
            f"/api/v1/nodes/{self.node}/status",
            status,
            content_type="application/strategic-merge-patch+json",
        )
        if code != 200:
            log(f"node status update failed: {code} {raw[:200]!r}")
        self._renew_lease()

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        stamp = datetime_micro()
        lease = self.api.get_json(path)
        spec = {
            "holderIdentity": self.node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": stamp,
        }
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": self.node,
                         "uid": self._node_uid()}
                    ],
                },
                "spec": spec,
            }  # fmt: skip
            self.api.request(
                "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body
            )
        else:
            lease["spec"].update(spec)
            self.api.request("PUT", path, lease)

    def _node_uid(self) -> str:
        node = self.api.get_json(f"/api/v1/nodes/{self.node}")
        return str((node or {}).get("metadata", {}).get("uid", ""))

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(HEARTBEAT):
            try:
                self.heartbeat()
            except (OSError, urllib.error.URLError) as err:
                log(f"heartbeat failed: {err}")

    # --- pods ---------------------------------------------------------------------------

    def _event(self, pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        stamp = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "modelpilot-node-agent",
            "reportingInstance": self.node,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body)
        log(f"{meta['namespace']}/{meta['name']}: {reason}: {message}")

    def _runner_exited(self, runner: PodRunner) -> None:
        with self.lock:
            if self.runners.get(runner.uid) is runner:
                del self.runners[runner.uid]
        try:
            self.network.detach(runner.uid)
        except podnet.NetworkError as err:
            log(f"pod network of {runner.ns}/{runner.pod_name} not removed: {err}")
        runner.cleanup()

    def _sync_pod(self, pod: dict[str, Any], deleted: bool = False) -> None:
        uid = str(pod["metadata"]["uid"])
        with self.lock:
            runner = self.runners.get(uid)
        if deleted:
            if runner is not None:
                log(f"stopping pod {pod['metadata']['namespace']}/{pod['metadata']['name']}")
                grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
                runner.terminate(min(grace, SHUTDOWN_GRACE), delete_object=False)
            return
        if runner is not None:
            runner.update(pod)
            return
        phase = pod.get("status", {}).get("phase")
        if pod["metadata"].get("deletionTimestamp"):
            # Deleted before (or while the agent was not) running it: nothing to stop.
            self.api.request(
                "DELETE",
                f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
            )
            return
        if phase in ("Succeeded", "Failed"):
            return
        # A pod the agent finds running again (after the agent restarted) keeps its
        # address: status.podIP cannot change, and clients already use it.
        runner = PodRunner(
            self.api,
            pod,
            self.network,
            self.plan.node_ip,
            self.pods_dir,
            self.base_env,
            CAPACITY,
            self._runner_exited,
            self._event,
        )
        with self.lock:
            self.runners[uid] = runner
        log(f"starting pod {pod['metadata']['namespace']}/{pod['metadata']['name']}")
        runner.start()

    def _watch_loop(self) -> None:
        selector = urllib.parse.quote(f"spec.nodeName={self.node}")
        while not self.stop.is_set():
            try:
                listing = self.api.get_json(f"/api/v1/pods?fieldSelector={selector}")
                if listing is None:
                    raise OSError("cannot list pods")
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(str(pod["metadata"]["uid"]))
                    self._sync_pod(pod)
                with self.lock:
                    gone = [r for uid, r in self.runners.items() if uid not in seen]
                for runner in gone:
                    runner.terminate(SHUTDOWN_GRACE, delete_object=False)
                rv = listing["metadata"]["resourceVersion"]
                path = (
                    f"/api/v1/pods?fieldSelector={selector}&watch=1&resourceVersion={rv}"
                    "&allowWatchBookmarks=true&timeoutSeconds=60"
                )
                for event in self.api.watch(path, timeout=90):
                    if self.stop.is_set():
                        return
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if kind in ("ADDED", "MODIFIED"):
                        self._sync_pod(obj)
                    elif kind == "DELETED":
                        self._sync_pod(obj, deleted=True)
            except (OSError, urllib.error.URLError, ValueError) as err:
                log(f"pod watch interrupted: {err}")
                self.stop.wait(1)

    # --- the kubelet API's view ---------------------------------------------------------

    def _runners(self) -> list[PodRunner]:
        with self.lock:
            return list(self.runners.values())

    def running_containers(self) -> list[RunningContainer]:
        found = []
        for runner in self._runners():
            for c in runner.running_containers():
                proc = c.proc
                if proc is None:
                    continue
                found.append(
                    RunningContainer(
                        runner.ns, runner.pod_name, runner.uid, c.name, proc.pid, c.started_wall
                    )
                )
        return found

    def log_source(self, namespace: str, pod: str, container: str) -> LogSource | None:
        """The log of a pod's container: a running pod's, else the newest kept on disk."""
        for runner in self._runners():
            if runner.ns == namespace and runner.pod_name == pod:
                found = runner.container(container)
                if found is None:
                    return None
                return LogSource(found.log, found.alive)
        if not (NAME.fullmatch(namespace) and NAME.fullmatch(pod) and NAME.fullmatch(container)):
            return None
        kept = sorted(
            self.pods_dir.glob(f"{namespace}_{pod}_*/logs/{container}.log"),
            key=lambda p: p.stat().st_mtime,
        )
        return LogSource(kept[-1], lambda: False) if kept else None

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> None:
        if self.kubelet is not None:
            self.kubelet.start()
            log(f"kubelet API on https://{self.plan.node_ip}:{self.kubelet_port}")
        self.register()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._watch_loop, name="watch", daemon=True).start()
        self.stop.wait()
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every pod's processes (the node is going away with the cluster)."""
        with self.lock:
            runners = list(self.runners.values())
        log(f"stopping {len(runners)} pods")
        for runner in runners:
            runner.terminate(SHUTDOWN_GRACE, delete_object=False)
        for runner in runners:
            runner.join(SHUTDOWN_GRACE + 5)
        if self.kubelet is not None:
            self.kubelet.stop()
        log("node agent stopped")


def datetime_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.node_agent", description=__doc__)
    parser.add_argument("--cluster-dir", type=Path, required=True)
    parser.add_argument("--node-name", default=NODE_NAME)
    args = parser.parse_args(argv)
    agent = NodeAgent(AgentConfig(Layout(root=args.cluster_dir), node_name=args.node_name))

    def stop(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
