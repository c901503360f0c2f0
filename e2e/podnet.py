"""The local node's pod network: a bridge, one network namespace per pod, the CNI plugins.

Like a kubelet with a CNI configuration, the node agent gives every pod a network
namespace of its own and calls the upstream CNI plugins (``bridge`` with ``host-local``
address management, and ``loopback``) to give it an ``eth0`` on the node's bridge and an
address in the pod range. Containers run inside that namespace (``nsenter --net``), share
it, and see ``localhost`` as the pod's own.

Addresses of cluster N (``$MODELPILOT_CLUSTER_INDEX``), all private and all on this
machine:

* pods: ``10.244.<16N>.0/20``; the bridge ``mpbr<N>`` holds the first address, which is
  also the node's InternalIP and the address pods reach the host's services on;
* Services: ``10.96.<16N>.0/20`` (kube-proxy's ClusterIPs), routed into the bridge on the
  host, so nothing addressed to a Service leaves the machine even with no proxy running.

Pods get routes to the pod range and the Service range only, no default route: a pod
cannot send to any address outside this machine. Forwarding is switched on for the
bridge alone (``net.ipv4.conf.mpbr<N>.forwarding``, which goes with the bridge), and an
nftables table drops anything forwarded from the bridge to another interface.

:func:`setup_host` and :func:`teardown_host` make and remove all of it; :func:`leftovers`
lists what a cluster left on the host (the clean-up test asks it for nothing).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/var/run/netns")
CNI_VERSION = "1.0.0"


class NetworkError(RuntimeError):
    """A step of the pod network failed; the message names the command and its output."""


@dataclass(frozen=True)
class NetPlan:
    """The addresses and names of one local cluster's pod network (pure)."""

    index: int = 0

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{16 * self.index}.0/20"

    @property
    def service_cidr(self) -> str:
        return f"10.96.{16 * self.index}.0/20"

    @property
    def node_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))

    @property
    def kubernetes_service_ip(self) -> str:
        """The first Service address, which the API server gives the `kubernetes` Service."""
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    @property
    def prefix_len(self) -> int:
        return ipaddress.ip_network(self.pod_cidr).prefixlen

    @property
    def bridge(self) -> str:
        return f"mpbr{self.index}"

    @property
    def netns_prefix(self) -> str:
        return f"mp{self.index}-"

    @property
    def guard_table(self) -> str:
        return f"modelpilot-{self.index}"

    @property
    def network_name(self) -> str:
        return f"modelpilot-{self.index}"

    @property
    def runs_kube_proxy(self) -> bool:
        """kube-proxy's nftables tables have fixed names: one per machine, cluster 0's."""
        return self.index == 0

    def nft_tables(self) -> list[tuple[str, str]]:
        """The nftables tables this cluster's network owns."""
        tables = [("inet", self.guard_table)]
        if self.runs_kube_proxy:
            tables += [("ip", "kube-proxy"), ("ip6", "kube-proxy")]
        return tables

    def netns_name(self, pod_uid: str) -> str:
        return f"{self.netns_prefix}{pod_uid}"

    def conflist(self, ipam_dir: Path) -> dict[str, Any]:
        """The CNI network configuration list, as a kubelet reads it from /etc/cni/net.d."""
        return {
            "cniVersion": CNI_VERSION,
            "name": self.network_name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    # A pod reaching a Service of its own goes out and back in the bridge.
                    "hairpinMode": True,
                    # Nothing is NATed to the outside: pods only reach this machine.
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_cidr, "gateway": self.node_ip}]],
                        # The pod range is on-link; the Service range goes via the node.
                        "routes": [{"dst": self.service_cidr}],
                        "dataDir": str(ipam_dir),
                    },
                },
            ],
        }

    def loopback_conf(self) -> dict[str, Any]:
        return {"cniVersion": CNI_VERSION, "name": "loopback", "type": "loopback"}

    def guard_rules(self) -> str:
        """nftables: nothing from the pod bridge is forwarded anywhere but back into it."""
        br = self.bridge
        return (
            f"table inet {self.guard_table} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter - 10; policy accept;\n"
            f'    iifname "{br}" oifname != "{br}" counter drop\n'
            f'    oifname "{br}" iifname != "{br}" counter drop\n'
            "  }\n"
            "}\n"
        )


# --- commands ---------------------------------------------------------------------------


def run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            argv, input=stdin, env=env, capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NetworkError(f"{' '.join(argv)}: {err}") from err
    if done.returncode != 0:
        raise NetworkError(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def require_tools() -> None:
    """Root and the commands the pod network uses, or a message that says how to get them."""
    if os.geteuid() != 0:
        raise NetworkError(
            "the local cluster's pod network needs root (network namespaces, a bridge)"
        )
    missing = [t for t in ("ip", "nsenter", "nft") if shutil.which(t) is None]
    if missing:
        raise NetworkError(
            f"missing {', '.join(missing)}: install iproute2, util-linux and nftables "
            "(`make host-deps` does: apt-get install iproute2 util-linux nftables conntrack)"
        )


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def nft_table_exists(family: str, name: str) -> bool:
    done = subprocess.run(
        ["nft", "list", "table", family, name], capture_output=True, text=True, check=False
    )
    return done.returncode == 0


def netns_list(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def _write_sysctl(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:
        raise NetworkError(f"cannot set {path}: {err}") from err


# --- the host's side --------------------------------------------------------------------


def setup_host(plan: NetPlan) -> None:
    """The bridge with the node's address, the Service route, forwarding, the guard."""
    require_tools()
    br = plan.bridge
    if not link_exists(br):
        run(["ip", "link", "add", br, "type", "bridge"])
    addr = f"{plan.node_ip}/{plan.prefix_len}"
    if addr not in run(["ip", "-4", "-o", "addr", "show", "dev", br]):
        run(["ip", "addr", "add", addr, "dev", br])
    run(["ip", "link", "set", br, "up"])
    # Traffic the host sends to a ClusterIP leaves from the node's address, through the
    # bridge: kube-proxy's DNAT picks the pod, and the pod's reply comes back here.
    run(["ip", "route", "replace", plan.service_cidr, "dev", br, "src", plan.node_ip])
    # Packets that arrive on the bridge may be forwarded (a pod to a Service's pod);
    # the machine-wide switch stays as it is.
    _write_sysctl(Path(f"/proc/sys/net/ipv4/conf/{br}/forwarding"), "1")
    if nft_table_exists("inet", plan.guard_table):
        run(["nft", "delete", "table", "inet", plan.guard_table])
    run(["nft", "-f", "-"], stdin=plan.guard_rules())


def teardown_host(plan: NetPlan, state_dir: Path) -> list[str]:
    """Remove every namespace, link, rule and address record the cluster made.

    Returns what it removed, for the caller to report. Safe to call when nothing is there.
    """
    removed: list[str] = []
    for name in netns_list(plan.netns_prefix):
        with contextlib.suppress(NetworkError):
            run(["ip", "netns", "delete", name])
            removed.append(f"netns {name}")
    if link_exists(plan.bridge):
        # Deleting the bridge takes its address, route and the pods' veth ends with it.
        run(["ip", "link", "delete", plan.bridge])
        removed.append(f"bridge {plan.bridge}")
    if shutil.which("nft"):
        for family, table in plan.nft_tables():
            if nft_table_exists(family, table):
                run(["nft", "delete", "table", family, table])
                removed.append(f"nftables table {family} {table}")
    ipam = state_dir / "cni"
    if ipam.exists():
        shutil.rmtree(ipam, ignore_errors=True)
    return removed


def leftovers(plan: NetPlan) -> list[str]:
    """What of this cluster's network is on the host (empty when the host is clean)."""
    found = [f"netns {n}" for n in netns_list(plan.netns_prefix)]
    if link_exists(plan.bridge):
        found.append(f"bridge {plan.bridge}")
    if shutil.which("nft"):
        for family, table in plan.nft_tables():
            if nft_table_exists(family, table):
                found.append(f"nftables table {family} {table}")
    return found


# --- the pods' side ---------------------------------------------------------------------


@dataclass(frozen=True)
class PodNet:
    """A pod's network namespace and address."""

    netns: str
    ip: str

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.netns)

    def enter(self) -> list[str]:
        """The argv prefix that runs a command inside the pod's network namespace."""
        return ["nsenter", f"--net={self.path}", "--"]


class PodNetwork:
    """Attaches pods to the node's bridge through the CNI plugins, and detaches them."""

    def __init__(self, plan: NetPlan, cni_bin: Path, state_dir: Path) -> None:
        self.plan = plan
        self.cni_bin = cni_bin
        self.dir = state_dir / "cni"
        self.ipam_dir = self.dir / "ipam"
        self.conf_dir = self.dir / "net.d"
        self.conflist = plan.conflist(self.ipam_dir)

    def write_config(self) -> Path:
        """The conflist on disk, where a person looks for it (it is also what is run)."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        path = self.conf_dir / "10-modelpilot.conflist"
        path.write_text(json.dumps(self.conflist, indent=2) + "\n")
        return path

    def _exec(
        self,
        command: str,
        conf: dict[str, Any],
        container_id: str,
        netns: str,
        ifname: str,
        args: dict[str, str],
    ) -> dict[str, Any]:
        plugin = self.cni_bin / str(conf["type"])
        if not plugin.is_file():
            raise NetworkError(f"CNI plugin {plugin} is missing: run `make cluster-build`")
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": str(NETNS_DIR / netns),
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.cni_bin),
            "CNI_ARGS": ";".join(["IgnoreUnknown=1", *(f"{k}={v}" for k, v in args.items())]),
        }
        out = run([str(plugin)], stdin=json.dumps(conf), env=env)
        if command != "ADD" or not out.strip():
            return {}
        result: dict[str, Any] = json.loads(out)
        return result

    def _chain(self, command: str, uid: str, netns: str, args: dict[str, str]) -> dict[str, Any]:
        """Run the conflist's plugins in order (ADD) or reverse order (DEL), as libcni."""
        plugins = list(self.conflist["plugins"])
        if command == "DEL":
            plugins.reverse()
        prev: dict[str, Any] | None = None
        for plugin in plugins:
            conf = {
                "cniVersion": self.conflist["cniVersion"],
                "name": self.conflist["name"],
                **plugin,
            }
            if prev is not None:
                conf["prevResult"] = prev
            result = self._exec(command, conf, uid, netns, "eth0", args)
            if command == "ADD":
                prev = result
        return prev or {}

    def attach(self, uid: str, namespace: str, name: str, want_ip: str | None) -> PodNet:
        """The pod's namespace with ``eth0`` and ``lo``; ``want_ip`` kept when free.

        A namespace that already exists (the agent restarted while the pod ran) is kept
        with its address.
        """
        netns = self.plan.netns_name(uid)
        if (NETNS_DIR / netns).exists():
            ip = self.address_of(netns)
            if ip is not None:
                return PodNet(netns, ip)
            self.detach(uid)
        run(["ip", "netns", "add", netns])
        args = {"K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name, "K8S_POD_UID": uid}
        try:
            if want_ip and ipaddress.ip_address(want_ip) in ipaddress.ip_network(
                self.plan.pod_cidr
            ):
                try:
                    result = self._chain("ADD", uid, netns, {**args, "IP": want_ip})
                except NetworkError:
                    # Taken meanwhile: any free address will do.
                    self._chain("DEL", uid, netns, args)
                    result = self._chain("ADD", uid, netns, args)
            else:
                result = self._chain("ADD", uid, netns, args)
            self._exec("ADD", self.plan.loopback_conf(), uid, netns, "lo", {})
        except BaseException:
            with contextlib.suppress(NetworkError):
                self.detach(uid)
            raise
        ips = result.get("ips") or []
        if not ips:
            self.detach(uid)
            raise NetworkError(f"the CNI plugins gave pod {namespace}/{name} no address")
        return PodNet(netns, str(ips[0]["address"]).split("/")[0])

    def address_of(self, netns: str) -> str | None:
        try:
            out = run(["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", "eth0"])
        except NetworkError:
            return None
        for word in out.split():
            if "/" in word and word[0].isdigit():
                return word.split("/")[0]
        return None

    def detach(self, uid: str) -> None:
        """CNI DEL (which releases the address), then the namespace goes."""
        netns = self.plan.netns_name(uid)
        with contextlib.suppress(NetworkError):
            self._chain("DEL", uid, netns, {})
        if (NETNS_DIR / netns).exists():
            run(["ip", "netns", "delete", netns])
