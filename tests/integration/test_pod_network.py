"""`up` and `down` of a second local cluster leave the host's network as they found it.

Cluster 7 (``MODELPILOT_CLUSTER_INDEX=7``) runs beside the test session's cluster with its
own ports, folder, bridge and pod range; one pod makes a network namespace, a veth pair
and an address record, and `down` must take every one of them away.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e import podnet
from e2e.build import cache_root, default_paths
from e2e.cluster import REPO_ROOT, Ports, port_in_use
from e2e.kube import wait_for

pytestmark = pytest.mark.integration

INDEX = 7
PLAN = podnet.NetPlan(INDEX)
GATEWAY_PORT = Ports.for_index(INDEX).gateway


def out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def host_state() -> dict[str, str]:
    """What of the host's network cluster 7 could touch (cluster 0's pods come and go)."""
    mine = (PLAN.pod_cidr.split("/")[0], PLAN.service_cidr.split("/")[0], PLAN.node_ip)
    return {
        "leftovers": "\n".join(podnet.leftovers(PLAN)),
        "routes": "\n".join(
            line
            for line in out("ip", "route", "show", "table", "all").splitlines()
            if any(m in line for m in mine)
        ),
        "addresses": "\n".join(
            line for line in out("ip", "-o", "-4", "addr").splitlines() if PLAN.node_ip in line
        ),
        "nftables": out("nft", "list", "tables"),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }


def test_down_removes_every_namespace_link_rule_and_address(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MODELPILOT_CLUSTER_INDEX": str(INDEX),
        "MODELPILOT_CLUSTER_DIR": str(tmp_path / "cluster"),
        "MODELPILOT_CACHE": str(cache_root()),
        "PYTHONPATH": str(REPO_ROOT),
    }
    kubectl = [
        str(default_paths().binary("kubectl")),
        f"--kubeconfig={tmp_path / 'cluster' / 'kubeconfig'}",
    ]

    def cli(verb: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "e2e.cluster", verb],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, f"{verb}:\n{done.stdout}{done.stderr}"

    def pod_ip() -> str | None:
        got = subprocess.run(
            [*kubectl, "get", "pod", "probe", "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
        )
        status = json.loads(got.stdout).get("status", {}) if got.returncode == 0 else {}
        ip: str | None = status.get("podIP")
        return ip if status.get("phase") == "Running" else None

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "server", "image": "modelpilot/testserver", "args": ["--port", "8080"]}
            ],
        },
    }
    before = host_state()
    assert not before["leftovers"], "cluster 7's network is on the host before its test"
    try:
        cli("up")
        subprocess.run(
            [*kubectl, "apply", "-f", "-"],
            input=json.dumps(pod),
            text=True,
            check=True,
            capture_output=True,
        )
        ip = wait_for("cluster 7's pod to run", pod_ip)
        assert ip.startswith("10.244.112.")
        during = host_state()
        assert f"bridge {PLAN.bridge}" in during["leftovers"]
        assert f"netns {PLAN.netns_prefix}" in during["leftovers"]
        assert during["routes"]
        assert during["addresses"]
        assert PLAN.guard_table in during["nftables"]
        # Traefik, where it is built, serves cluster 7's Gateway on its own port.
        traefik_built = default_paths().binary("traefik").exists()
        assert port_in_use(GATEWAY_PORT) == traefik_built
    finally:
        cli("down")
    assert host_state() == before
    assert not port_in_use(GATEWAY_PORT)
