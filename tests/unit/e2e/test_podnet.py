"""The pod network's plan: addresses, names and the CNI configuration (no root needed)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from e2e.podnet import NetPlan, PodNet


def test_clusters_get_disjoint_private_ranges_and_names() -> None:
    plans = [NetPlan(i) for i in range(10)]
    nets = [ipaddress.ip_network(p.pod_cidr) for p in plans]
    nets += [ipaddress.ip_network(p.service_cidr) for p in plans]
    assert all(n.is_private for n in nets)
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
    assert len({p.bridge for p in plans}) == 10
    assert all(len(p.bridge) <= 15 for p in plans)  # IFNAMSIZ
    assert len({p.netns_prefix for p in plans}) == 10
    assert not any(
        a.netns_prefix.startswith(b.netns_prefix) for a in plans for b in plans if a != b
    )


def test_node_address_is_the_first_of_the_pod_range() -> None:
    plan = NetPlan(0)
    assert plan.pod_cidr == "10.244.0.0/20"
    assert plan.node_ip == "10.244.0.1"
    assert plan.kubernetes_service_ip == "10.96.0.1"
    assert NetPlan(2).node_ip == "10.244.32.1"


def test_conflist_gives_pods_routes_to_this_machine_only(tmp_path: Path) -> None:
    plan = NetPlan(1)
    conf = plan.conflist(tmp_path)
    (bridge,) = conf["plugins"]
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == plan.bridge
    assert bridge["isGateway"] is True
    assert bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    assert ipam["type"] == "host-local"
    assert ipam["ranges"] == [[{"subnet": plan.pod_cidr, "gateway": plan.node_ip}]]
    # No default route: the Service range is the only one beyond the pod range.
    assert ipam["routes"] == [{"dst": plan.service_cidr}]
    assert ipam["dataDir"] == str(tmp_path)


def test_guard_drops_whatever_crosses_between_the_bridge_and_other_links() -> None:
    rules = NetPlan(3).guard_rules()
    assert "table inet modelpilot-3" in rules
    assert 'iifname "mpbr3" oifname != "mpbr3" counter drop' in rules
    assert 'oifname "mpbr3" iifname != "mpbr3" counter drop' in rules


def test_only_cluster_zero_owns_kube_proxys_tables() -> None:
    assert ("ip", "kube-proxy") in NetPlan(0).nft_tables()
    assert NetPlan(4).nft_tables() == [("inet", "modelpilot-4")]


def test_containers_enter_the_pods_namespace() -> None:
    net = PodNet("mp0-abc", "10.244.0.9")
    assert net.enter() == ["nsenter", "--net=/var/run/netns/mp0-abc", "--"]
