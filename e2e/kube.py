"""Helpers for code that drives the local cluster from Python: clients, waiting, identity.

The identity check is the guard every test fixture goes through: a kubeconfig is used
only when it points at 127.0.0.1, trusts this cluster's CA, and the API server behind
it holds the identity ConfigMap that ``up`` wrote with this cluster's id.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import yaml

from e2e.cluster import IDENTITY_CONFIGMAP, Api, Cluster, ClusterError

T = TypeVar("T")


class NotLocalClusterError(ClusterError):
    """A kubeconfig that does not lead to this machine's local cluster."""


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 120, interval: float = 0.2
) -> T:
    """Poll until ``probe`` returns something truthy and return it.

    The timeout only keeps a broken cluster from hanging a run; it is no assertion on
    speed, and it is generous on purpose.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what} (last: {last!r})")


def verify_local(cluster: Cluster, kubeconfig: Path | None = None) -> None:
    """Raise NotLocalClusterError unless ``kubeconfig`` belongs to the running local cluster."""
    path = kubeconfig or cluster.layout.kubeconfig
    try:
        config: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise NotLocalClusterError(f"cannot read kubeconfig {path}: {err}") from err
    contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters") or []}
    current = contexts.get(str(config.get("current-context")))
    if current is None or current.get("cluster") not in clusters:
        raise NotLocalClusterError(f"{path} has no usable current context")
    entry = clusters[current["cluster"]]
    server = str(entry.get("server", ""))
    host = urlparse(server).hostname
    if host not in ("127.0.0.1", "localhost") or server != cluster.layout.server:
        raise NotLocalClusterError(f"{path} points at {server}, not the local cluster")
    ca_data = str(entry.get("certificate-authority-data", ""))
    local_ca = (cluster.layout.pki / "ca.crt").read_bytes()

    if base64.b64decode(ca_data) != local_ca:
        raise NotLocalClusterError(f"{path} does not trust the local cluster's CA")
    ns, name = IDENTITY_CONFIGMAP
    found = Api(cluster.layout).get_json(f"/api/v1/namespaces/{ns}/configmaps/{name}")
    if not found or found.get("data", {}).get("id") != cluster.cluster_id:
        raise NotLocalClusterError(f"the API server at {server} is not the cluster `up` started")


@dataclass(frozen=True)
class LocalCluster:
    """What a test needs to reach the local cluster."""

    cluster: Cluster
    kubeconfig: Path
    bin: Path

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    def get(self, *args: str) -> dict[str, Any] | None:
        """``kubectl get ... -o json``; None when the object does not exist."""
        proc = self.kubectl("get", *args, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {proc.stderr}")
        data: dict[str, Any] = json.loads(proc.stdout)
        return data
