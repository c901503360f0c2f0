"""Starts, stops and reports on the local cluster: ``python -m e2e.cluster VERB``.

Verbs: ``build`` (binaries into the cache, see :mod:`e2e.build`), ``up``, ``down``,
``status`` and ``env``.

Owns the cluster folder (``~/.cache/modelpilot/cluster`` or ``$MODELPILOT_CLUSTER_DIR``):
``pki/``, the kubeconfigs, ``etcd-data/``, ``logs/`` (one file per component) and
``state.json`` (the pid of every process ``up`` started, with the process start time so
that ``down`` never signals a recycled pid).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e import build as buildmod
from e2e import podnet, versions
from e2e.pki import CertPair, Pki

REPO_ROOT = Path(__file__).resolve().parent.parent
# Room for benchmarks that create hundreds of Services.
NODE_NAME = "modelpilot-local"
PROMETHEUS_USER = "modelpilot:prometheus"
# The API server's client certificate for the kubelet API (bound to system:kubelet-api-admin).
KUBELET_API_CLIENT = "kube-apiserver-kubelet-client"
# metrics-server's identity: the ServiceAccount its upstream manifests bind, as a client
# certificate (the process runs on the host, not as a pod with a token).
METRICS_SERVER_USER = "system:serviceaccount:kube-system:metrics-server"
METRICS_SERVER_RESOLUTION = "10s"  # its minimum; the HPA controller syncs every 5s
# Set by the node agent in every container's environment, to the cluster's folder.
POD_MARKER = "MODELPILOT_LOCAL_CLUSTER_POD"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
IDENTITY_CONFIGMAP = ("kube-system", "modelpilot-local-cluster")
START_TIMEOUT = 120.0
STOP_GRACE = 10.0
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class ClusterError(RuntimeError):
    """The cluster could not be started or reached; the message says why."""


@dataclass(frozen=True)
class Ports:
    apiserver: int = 16443
    etcd: int = 12379
    etcd_peer: int = 12380
    controller_manager: int = 17257
    scheduler: int = 17259
    prometheus: int = 19090
    kube_proxy_healthz: int = 18256
    kube_proxy_metrics: int = 18249
    # Traefik: the Gateway's listener, and its own entry point for /ping and /api.
    gateway: int = 18000
    gateway_admin: int = 18081
    # On the node's address (10.244.<16N>.1), not on 127.0.0.1: the node agent's kubelet
    # API, and metrics-server, which the aggregator reaches through an EndpointSlice.
    kubelet: int = 10250
    metrics_server: int = 14443

    @classmethod
    def for_index(cls, index: int) -> Ports:
        """Cluster N (``$MODELPILOT_CLUSTER_INDEX``) listens 100*N ports higher."""
        base = cls()
        return cls(**{k: v + 100 * index for k, v in vars(base).items()})


def cluster_index() -> int:
    """Which of several local clusters on this machine (0 unless told otherwise)."""
    index = int(os.environ.get("MODELPILOT_CLUSTER_INDEX", "0"))
    if not 0 <= index <= 9:
        raise ClusterError("MODELPILOT_CLUSTER_INDEX must be 0..9")
    return index


def cluster_dir() -> Path:
    env = os.environ.get("MODELPILOT_CLUSTER_DIR")
    if env:
        return Path(env).expanduser()
    index = cluster_index()
    return buildmod.cache_root() / ("cluster" if index == 0 else f"cluster-{index}")


def net_plan() -> podnet.NetPlan:
    """Cluster N's pod and Service ranges, bridge and names (see :mod:`e2e.podnet`)."""
    return podnet.NetPlan(cluster_index())


def pod_cidr() -> str:
    return net_plan().pod_cidr


PROMETHEUS_PORT = Ports.for_index(cluster_index()).prometheus

# The Gateway API data plane: Traefik, the controller of GatewayClass GATEWAY_CLASS, and the
# one Gateway that ModelDeployments with router gatewayApi name in routing.parentRefs. Its
# listener is Traefik's entry point on 127.0.0.1:GATEWAY_PORT.
TRAEFIK_USER = "modelpilot:traefik"
GATEWAY_CONTROLLER = "traefik.io/gateway-controller"
GATEWAY_CLASS = "traefik"
GATEWAY_NAMESPACE = "modelpilot-gateway"
GATEWAY_NAME = "modelpilot"
GATEWAY_PORT = Ports.for_index(cluster_index()).gateway
GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}"


def gateway_host(name: str, namespace: str) -> str:
    """The hostname the tests and the demo give a ModelDeployment's HTTPRoute (``.test``
    is reserved: no name of it resolves anywhere)."""
    return f"{name}.{namespace}.gateway.test"


def gateway_routing(name: str, namespace: str) -> dict[str, Any]:
    """``spec.routing`` for router gatewayApi on the cluster's Gateway, on its own host."""
    return {
        "router": "gatewayApi",
        "parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
        "hosts": [gateway_host(name, namespace)],
    }


# Prometheus as pods (the operator's chart, the demo) reach it: through the pod gateway.
PROMETHEUS_URL_FROM_PODS = f"http://{net_plan().node_ip}:{PROMETHEUS_PORT}"


@dataclass
class Layout:
    """Paths of one cluster's files."""

    root: Path = field(default_factory=cluster_dir)
    ports: Ports = field(default_factory=lambda: Ports.for_index(cluster_index()))

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def prometheus_data(self) -> Path:
        return self.root / "prometheus-data"

    @property
    def front_proxy(self) -> Path:
        return self.pki / "front-proxy"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def component_kubeconfig(self, name: str) -> Path:
        return self.root / f"{name}.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


# --- processes --------------------------------------------------------------------------


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are plain.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is as good as gone
        return None
    return int(fields[19])


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Process:
    name: str
    pid: int
    start_time: int

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Process:
        return cls(str(data["name"]), int(data["pid"]), int(data["start_time"]))


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


def stop_process(proc: Process, grace: float = STOP_GRACE) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; only if it is still ours."""
    if not proc.alive():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not proc.alive():
            return
        reap(proc.pid)
        time.sleep(0.05)
    if proc.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        while proc.alive():
            reap(proc.pid)
            time.sleep(0.05)


# Children started by this interpreter, kept so that they are waited for (an exited
# child would otherwise stay a zombie, and a dropped Popen warns that it still runs).
_children: dict[int, subprocess.Popen[bytes]] = {}


def reap(pid: int) -> None:
    """Collect a child that exited, so that it does not linger as a zombie."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --- talking to the API server ----------------------------------------------------------


class Api:
    """A minimal HTTPS client with a client certificate (admin's unless told otherwise)."""

    def __init__(self, layout: Layout, user: str = "admin") -> None:
        self.server = layout.server
        ctx = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
        ctx.load_cert_chain(str(layout.pki / f"{user}.crt"), str(layout.pki / f"{user}.key"))
        self.ctx = ctx

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float = 5,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return int(err.code), bytes(err.read())

    def get_json(self, path: str) -> dict[str, Any] | None:
        code, body = self.request("GET", path)
        if code != 200:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None

    def watch(self, path: str, timeout: float) -> Iterator[dict[str, Any]]:
        """The events of a watch request, one decoded JSON object per line."""
        req = urllib.request.Request(self.server + path)
        with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
            for line in resp:
                if line.strip():
                    event = json.loads(line)
                    if isinstance(event, dict):
                        yield event


def http_ok(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False


def insecure_context() -> ssl.SSLContext:
    """For the /healthz of components that serve a self-signed certificate on loopback."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- the cluster ------------------------------------------------------------------------


def write_kubeconfig(path: Path, server: str, ca: Path, client: CertPair, user: str) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "modelpilot-local",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [
            {"name": "modelpilot-local", "context": {"cluster": "modelpilot-local", "user": user}}
        ],
        "current-context": "modelpilot-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


class Cluster:
    """One local cluster: its files, its processes and the binaries it runs."""

    def __init__(
        self, layout: Layout | None = None, cache: buildmod.CachePaths | None = None
    ) -> None:
        self.layout = layout or Layout()
        self.cache = cache or buildmod.default_paths()
        self.processes: list[Process] = []
        self.cluster_id = ""
        self._up_started: float | None = None  # set while `up` runs, for its progress lines
        self._load_state()

    # state ------------------------------------------------------------------------------

    def _load_state(self) -> None:
        try:
            data = json.loads(self.layout.state.read_text())
        except (OSError, ValueError):
            data = {}
        self.processes = [Process.from_json(p) for p in data.get("processes", [])]
        self.cluster_id = str(data.get("cluster_id", ""))

    def _save_state(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        data = {
            "kubernetes": versions.KUBERNETES,
            "server": self.layout.server,
            "cluster_id": self.cluster_id,
            "processes": [p.to_json() for p in self.processes],
        }
        tmp = self.layout.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.layout.state)

    def process(self, name: str) -> Process | None:
        return next((p for p in self.processes if p.name == name), None)

    # starting ---------------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        with self.layout.log(name).open("wb") as log:
            # A session of its own: the component outlives `up` and ignores its Ctrl-C.
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.layout.root,
                env=env,
            )
        _children[popen.pid] = popen
        start = proc_start_time(popen.pid)
        if start is None:
            raise ClusterError(f"{name} exited at once:\n{log_tail(self.layout.log(name))}")
        # A component started again replaces its dead predecessor in the state.
        self.processes = [p for p in self.processes if p.name != name]
        self.processes.append(Process(name, popen.pid, start))
        self._save_state()

    def _wait(
        self, what: str, check: Callable[[], bool], names: Sequence[str] | None = None
    ) -> None:
        """Poll ``check`` until it holds; fail early, with logs, if a component died.

        ``names``: the components whose exit ends the wait (default: all started so far).
        """
        deadline = time.monotonic() + START_TIMEOUT
        if names is None:
            names = [p.name for p in self.processes]
        while True:
            for proc in self.processes:
                if proc.name in names and not proc.alive():
                    reap(proc.pid)
                    raise ClusterError(
                        f"{proc.name} exited while waiting for {what}; last lines of "
                        f"{self.layout.log(proc.name)}:\n{log_tail(self.layout.log(proc.name))}"
                    )
            if check():
                if self._up_started is not None:
                    say(f"   {what}: ok at {time.monotonic() - self._up_started:.1f}s")
                return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"  {n} ({self.layout.log(n)}):\n{log_tail(self.layout.log(n), 10)}"
                    for n in names
                )
                raise ClusterError(
                    f"timed out after {START_TIMEOUT:.0f}s waiting for {what}\n{logs}"
                )
            time.sleep(0.1)

    def _make_pki(self) -> Pki:
        pki = Pki(self.layout.pki)
        pki.create_ca()
        pki.create_service_account_key()
        pki.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            # Pods reach it through the pod gateway on the node's address.
            ips=("127.0.0.1", net_plan().node_ip, net_plan().kubernetes_service_ip),
        )
        ca = pki.ca.cert
        server = self.layout.server
        clients = {
            "admin": ("modelpilot-admin", ("system:masters",)),
            "controller-manager": ("system:kube-controller-manager", ()),
            "scheduler": ("system:kube-scheduler", ()),
        }
        for name, (cn, orgs) in clients.items():
            pair = pki.issue(name, cn, orgs=orgs)
            path = (
                self.layout.kubeconfig
                if name == "admin"
                else self.layout.component_kubeconfig(name)
            )
            write_kubeconfig(path, server, ca, pair, cn)
        # Identities that talk to the API server without a kubeconfig of their own.
        pki.issue("node", f"system:node:{NODE_NAME}", orgs=("system:nodes",))
        pki.issue("prometheus", PROMETHEUS_USER)
        plan = net_plan()
        # The node agent's kubelet API on the node's address, and the API server's client
        # for it (`kubectl logs`).
        pki.issue(
            "kubelet",
            f"system:node:{NODE_NAME}",
            server=True,
            dns=(NODE_NAME,),
            ips=(plan.node_ip,),
        )
        pki.issue("apiserver-kubelet-client", KUBELET_API_CLIENT)
        # metrics-server: the aggregator checks its certificate for the Service's name.
        pki.issue(
            "metrics-server",
            "metrics-server",
            server=True,
            dns=("metrics-server.kube-system.svc", "metrics-server.kube-system", "metrics-server"),
            ips=(plan.node_ip,),
        )
        ms = pki.issue(
            "metrics-server-client",
            METRICS_SERVER_USER,
            orgs=("system:serviceaccounts", "system:serviceaccounts:kube-system"),
        )
        write_kubeconfig(
            self.layout.component_kubeconfig("metrics-server"), server, ca, ms, METRICS_SERVER_USER
        )
        # The aggregator's front proxy gets a CA of its own, as on a kubeadm cluster: a
        # certificate from it makes the API server believe the X-Remote-User headers.
        front = Pki(self.layout.front_proxy)
        front.create_ca("modelpilot-local-front-proxy-ca")
        front.issue("front-proxy-client", "front-proxy-client")
        # The bootstrap policy binds system:node-proxier to this user.
        proxy = pki.issue("kube-proxy", "system:kube-proxy")
        write_kubeconfig(
            self.layout.component_kubeconfig("kube-proxy"), server, ca, proxy, "kube-proxy"
        )
        return pki

    def running(self) -> bool:
        """The control plane's processes all run (the node agent and Prometheus are
        extras that ``up`` restarts on their own)."""
        core = [p for p in self.processes if p.name in CONTROL_PLANE]
        return len(core) == len(CONTROL_PLANE) and all(p.alive() for p in core)

    def ready(self) -> bool:
        """Every component started by ``up`` runs and the API server is ready."""
        return self.running() and self._api_ready()

    def _api_ready(self) -> bool:
        if not self.layout.kubeconfig.exists():
            return False
        try:
            code, body = Api(self.layout).request("GET", "/readyz")
        except (OSError, ssl.SSLError):
            return False
        return code == 200 and body.strip() == b"ok"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``up`` or ``down`` at a time (two test sessions may start together)."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with (self.layout.root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Whoever held the lock may have changed the state: read it again.
            self._load_state()
            yield

    def up(self, node: bool = True, prometheus: bool = False) -> float:
        with self._locked():
            try:
                return self._up(node, prometheus)
            except BaseException:
                # Leave nothing half-started behind; the logs stay for the error report.
                self._down(quiet=True)
                raise

    def _up(self, node: bool, prometheus: bool) -> float:
        self._up_started = time.monotonic()
        try:
            return self._start_all(node, prometheus)
        finally:
            self._up_started = None

    def _start_all(self, node: bool, prometheus: bool) -> float:
        """Start every component and wait until the cluster is usable; returns seconds.

        ``node`` starts the node agent (pods run as local processes); ``prometheus``
        also starts Prometheus, which :meth:`start_prometheus` can do later as well.
        """
        start = time.monotonic()
        if self.ready():
            say(f"local cluster already running at {self.layout.server}")
            agent = self.process("node-agent")
            if node and (agent is None or not agent.alive()):
                self.start_node_agent()
                self._wait("the node to be Ready", lambda: node_ready(Api(self.layout)))
            metrics = self.process("metrics-server")
            if node and (metrics is None or not metrics.alive()):
                # Built since this cluster started, or exited: started like the agent.
                self._start_metrics_server(net_plan())
            if prometheus:
                self.start_prometheus()
            self.start_gateway()
            return 0.0
        if self.processes:
            say("a previous cluster is partly running: stopping it first")
            self._down(quiet=True)
        if not buildmod.is_complete(self.cache):
            raise ClusterError(
                "the local cluster's binaries are not built: run `python -m e2e.cluster build` "
                "(or `make cluster-build`)"
            )
        ports = self.layout.ports
        busy = [p for p in vars(ports).values() if port_in_use(p)]
        if busy:
            raise ClusterError(f"ports {busy} on 127.0.0.1 are in use by something else")

        layout = self.layout
        layout.root.mkdir(parents=True, exist_ok=True)
        for stale in (layout.etcd_data, layout.pki, layout.root / "pods", layout.prometheus_data):
            subprocess.run(["rm", "-rf", str(stale)], check=True)
        plan = net_plan()
        self._setup_network(plan)
        pki = self._make_pki()
        self.cluster_id = str(uuid.uuid4())
        self.processes = []
        self._save_state()
        b = self.cache.binary
        self._spawn(
            "pod-gateway",
            [
                sys.executable,
                "-m",
                "e2e.podgateway",
                f"--listen={plan.node_ip}",
                f"--port={ports.apiserver}",
                f"--port={ports.prometheus}",
            ],
            env=self._python_env(),
        )

        etcd_url = f"http://127.0.0.1:{ports.etcd}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        self._spawn(
            "etcd",
            [
                str(b("etcd")),
                "--name=local",
                f"--data-dir={layout.etcd_data}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=local={peer_url}",
                # Throw-away data: durability buys nothing and fsync costs seconds.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        p = layout.pki
        self._spawn(
            "kube-apiserver",
            [
                str(b("kube-apiserver")),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports.apiserver}",
                f"--cert-dir={p}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={pki.ca.cert}",
                f"--service-cluster-ip-range={plan.service_cidr}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                # The node agent's kubelet API (`kubectl logs`), checked against the CA.
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki.ca.cert}",
                "--kubelet-preferred-address-types=InternalIP",
                # Aggregated APIs (metrics.k8s.io): the front proxy's CA and client, and
                # requests dialed to the APIService's endpoints, not to a ClusterIP.
                f"--requestheader-client-ca-file={layout.front_proxy / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={layout.front_proxy / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={layout.front_proxy / 'front-proxy-client.key'}",
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                # The `kubernetes` Service would point at 127.0.0.1, which Endpoints
                # validation rejects; nothing here reaches the API server through it.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        self._wait("etcd health", lambda: http_ok(f"{etcd_url}/health"), ["etcd"])
        self._wait("kube-apiserver /readyz", self._api_ready, ["etcd", "kube-apiserver"])
        # The controllers start once /readyz is ok: before the RBAC bootstrap policy
        # exists, the controller-manager cannot read its authentication ConfigMap and exits.
        for name, extra in (
            (
                "kube-controller-manager",
                [
                    f"--secure-port={ports.controller_manager}",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca.cert}",
                    f"--cluster-signing-cert-file={pki.ca.cert}",
                    f"--cluster-signing-key-file={pki.ca.key}",
                    f"--service-cluster-ip-range={plan.service_cidr}",
                    "--use-service-account-credentials=true",
                    # HPAs react within seconds (the default is 15s).
                    "--horizontal-pod-autoscaler-sync-period=5s",
                    "--profiling=false",
                ],
            ),
            ("kube-scheduler", [f"--secure-port={ports.scheduler}", "--profiling=false"]),
        ):
            short = "controller-manager" if name == "kube-controller-manager" else "scheduler"
            kc = layout.component_kubeconfig(short)
            self._spawn(
                name,
                [
                    str(b(name)),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    "--leader-elect=false",
                    *extra,
                ],
            )

        # None needs the controllers: they overlap with their start-up.
        if node:
            self.start_node_agent()
            self._start_kube_proxy(plan)
        crds = self._start_crd_install()

        insecure = insecure_context()
        self._wait(
            "kube-controller-manager /healthz",
            lambda: http_ok(f"https://127.0.0.1:{ports.controller_manager}/healthz", insecure),
        )
        self._wait(
            "kube-scheduler /healthz",
            lambda: http_ok(f"https://127.0.0.1:{ports.scheduler}/healthz", insecure),
        )
        api = Api(layout)
        self._wait(
            "the default namespace and service account",
            lambda: api.get_json("/api/v1/namespaces/default/serviceaccounts/default") is not None,
        )
        self._mark_identity(api)
        self.kubectl("apply", "--server-side", "-f", "-", stdin=kubelet_api_rbac())
        self._finish_crd_install(crds)
        # After the CRDs: Traefik watches the Gateway API kinds from its start.
        self.start_gateway()
        if node:
            self._wait("the node to be Ready", lambda: node_ready(api))
            self._start_metrics_server(plan)
        if prometheus:
            self.start_prometheus()
        elapsed = time.monotonic() - start
        say(f"local cluster {versions.KUBERNETES} ready at {layout.server} in {elapsed:.1f}s")
        say(f"export KUBECONFIG={layout.kubeconfig}")
        return elapsed

    def _mark_identity(self, api: Api) -> None:
        """A ConfigMap naming this cluster, which the test fixtures check before running."""
        ns, name = IDENTITY_CONFIGMAP
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns},
            "data": {"id": self.cluster_id, "server": self.layout.server},
        }
        code, text = api.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body)
        if code not in (200, 201):
            raise ClusterError(f"cannot create the identity ConfigMap: {code} {text[:300]!r}")

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.cache.binary("kubectl")), f"--kubeconfig={self.layout.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed:\n{proc.stderr.strip()}")
        return proc

    def _start_crd_install(self) -> subprocess.Popen[str]:
        """Apply the upstream CRDs from the build cache, in the background."""
        args: list[str] = []
        for f in sorted(self.cache.crds.glob("*.yaml")):
            args += ["-f", str(f)]
        return subprocess.Popen(
            [
                str(self.cache.binary("kubectl")),
                f"--kubeconfig={self.layout.kubeconfig}",
                "apply",
                "--server-side",
                "--field-manager=modelpilot-local-cluster",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _finish_crd_install(self, proc: subprocess.Popen[str]) -> None:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise ClusterError(f"applying the upstream CRDs failed:\n{err.strip()}")
        names = [f"crd/{f.stem}" for f in sorted(self.cache.crds.glob("*.yaml"))]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        say(f"   {len(names)} upstream CRDs established")

    def _python_env(self) -> dict[str, str]:
        """The environment for the cluster's own Python components (modules of e2e)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        return env

    def _setup_network(self, plan: podnet.NetPlan) -> None:
        """The pod bridge, the Service route and the forwarding guard (see e2e.podnet)."""
        try:
            podnet.setup_host(plan)
        except podnet.NetworkError as err:
            raise ClusterError(f"cannot set up the pod network: {err}") from err
        say(f"   pod network {plan.pod_cidr} on {plan.bridge} (node {plan.node_ip})")

    def start_node_agent(self) -> None:
        """The node agent: registers the node and runs its pods as local processes."""
        self._spawn(
            "node-agent",
            [sys.executable, "-m", "e2e.node_agent", f"--cluster-dir={self.layout.root}"],
            env=self._python_env(),
        )

    def _start_kube_proxy(self, plan: podnet.NetPlan) -> None:
        """kube-proxy in nftables mode: ClusterIP Services route to ready pods.

        Its nftables table has a fixed name, so one machine runs one kube-proxy: cluster 0
        gets it; Services of the other local clusters are not routed.
        """
        if not plan.runs_kube_proxy:
            say(f"   cluster {plan.index}: no kube-proxy (one per machine, cluster 0 has it)")
            return
        binary = self.cache.binary("kube-proxy")
        ports = self.layout.ports
        self._spawn(
            "kube-proxy",
            [
                str(binary),
                f"--kubeconfig={self.layout.component_kubeconfig('kube-proxy')}",
                "--proxy-mode=nftables",
                f"--cluster-cidr={plan.pod_cidr}",
                f"--hostname-override={NODE_NAME}",
                # NodePorts on the node's bridge address only, never on the machine's own.
                f"--nodeport-addresses={plan.node_ip}/32",
                f"--healthz-bind-address=127.0.0.1:{ports.kube_proxy_healthz}",
                f"--metrics-bind-address=127.0.0.1:{ports.kube_proxy_metrics}",
                # Leave the machine's conntrack settings as they are.
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
                "--v=1",
            ],
        )

    def _start_metrics_server(self, plan: podnet.NetPlan) -> None:
        """metrics-server as the metrics.k8s.io APIService: `kubectl top`, CPU HPAs.

        It listens on the node's address (an EndpointSlice cannot name 127.0.0.1), scrapes
        the node agent's kubelet API, and is registered with its RBAC, a selectorless
        Service and an EndpointSlice naming its address (see metrics_server_manifests).
        """
        binary = self.cache.binary("metrics-server")
        if not binary.exists():
            say("   metrics-server is not built: no `kubectl top`, CPU HPAs do not scale")
            return
        layout = self.layout
        if not (layout.pki / "metrics-server.crt").exists():
            say("   this cluster was started without metrics-server: `down` and `up` to add it")
            return
        port = layout.ports.metrics_server
        ca_bundle = base64.b64encode(Pki(layout.pki).ca.cert.read_bytes()).decode()
        self.kubectl(
            "apply",
            "--server-side",
            "--field-manager=modelpilot-local-cluster",
            "-f",
            "-",
            stdin=metrics_server_manifests(plan.node_ip, port, ca_bundle),
        )
        kc = layout.component_kubeconfig("metrics-server")
        p = layout.pki
        self._spawn(
            "metrics-server",
            [
                str(binary),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--bind-address={plan.node_ip}",
                f"--secure-port={port}",
                f"--tls-cert-file={p / 'metrics-server.crt'}",
                f"--tls-private-key-file={p / 'metrics-server.key'}",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                "--kubelet-use-node-status-port",
                f"--metric-resolution={METRICS_SERVER_RESOLUTION}",
                # It must stay below the resolution (the default equals its minimum).
                "--kubelet-request-timeout=5s",
            ],
        )
        url = f"https://{plan.node_ip}:{port}/livez"
        self._wait(
            "metrics-server /livez",
            lambda: http_ok(url, insecure_context()),
            ["metrics-server"],
        )

    def start_prometheus(self) -> None:
        """Prometheus with Kubernetes pod discovery against this cluster; idempotent."""
        existing = self.process("prometheus")
        url = f"http://127.0.0.1:{self.layout.ports.prometheus}"
        if existing is not None and existing.alive():
            return
        self.kubectl("apply", "--server-side", "-f", "-", stdin=prometheus_rbac())
        config = self.layout.root / "prometheus.yml"
        config.write_text(prometheus_config(self.layout))
        self.layout.prometheus_data.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "prometheus",
            [
                str(self.cache.binary("prometheus")),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.layout.prometheus_data}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{self.layout.ports.prometheus}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
        )
        self._wait("Prometheus /-/ready", lambda: http_ok(f"{url}/-/ready"), ["prometheus"])
        say(f"Prometheus at {url}")

    def start_gateway(self) -> bool:
        """Traefik as the Gateway API data plane, its GatewayClass and the Gateway; idempotent.

        Returns False (and says so) when Traefik is not built: HTTPRoutes are then written
        but nothing enforces them.
        """
        binary = self.cache.binary("traefik")
        if not binary.exists():
            say("   Traefik is not built: HTTPRoutes are not enforced (make cluster-build)")
            return False
        existing = self.process("traefik")
        if existing is None or not existing.alive():
            self._start_traefik(binary)
        self.kubectl("apply", "--server-side", "-f", "-", stdin=gateway_manifests(self.layout))
        api = Api(self.layout)
        self._wait(
            f"Gateway {GATEWAY_NAMESPACE}/{GATEWAY_NAME} to be Accepted and Programmed",
            lambda: gateway_programmed(api),
            ["traefik"],
        )
        say(f"Gateway {GATEWAY_NAMESPACE}/{GATEWAY_NAME} (Traefik) at {GATEWAY_URL}")
        return True

    def _start_traefik(self, binary: Path) -> None:
        pki = Pki(self.layout.pki)
        pair = pki.issue("traefik", TRAEFIK_USER)
        kubeconfig = self.layout.component_kubeconfig("traefik")
        write_kubeconfig(kubeconfig, self.layout.server, pki.ca.cert, pair, TRAEFIK_USER)
        self.kubectl("apply", "--server-side", "-f", "-", stdin=traefik_rbac())
        config = self.layout.root / "traefik.yml"
        config.write_text(traefik_config(self.layout))
        # Traefik appends to its access log: one run's requests per file, as the other logs.
        self.layout.log("traefik-access").unlink(missing_ok=True)
        self._spawn(
            "traefik",
            [str(binary), f"--configFile={config}"],
            env=traefik_env(os.environ, kubeconfig),
        )
        ping = f"http://127.0.0.1:{self.layout.ports.gateway_admin}/ping"
        self._wait("Traefik /ping", lambda: http_ok(ping), ["traefik"])

    def _sweep_pod_processes(self, quiet: bool) -> None:
        """Kill pod processes an agent left behind (it was killed, or crashed).

        Only processes whose environment names this cluster's folder in POD_MARKER, which
        only the agent sets (for every container), are touched.
        """
        marker = f"{POD_MARKER}={self.layout.root}".encode()
        for pid in pod_processes(marker):
            if not quiet:
                say(f"killing left-over pod process {pid}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    # stopping ---------------------------------------------------------------------------

    def down(self, quiet: bool = False) -> None:
        """Stop what ``up`` started, newest first, and remove the cluster's data."""
        with self._locked():
            self._down(quiet)

    def _down(self, quiet: bool) -> None:
        for proc in reversed(self.processes):
            if proc.alive():
                if not quiet:
                    say(f"stopping {proc.name} (pid {proc.pid})")
                stop_process(proc)
        self.processes = []
        self._sweep_pod_processes(quiet)
        # Namespaces, bridge, rules: `down` leaves the host as `up` found it.
        try:
            removed = podnet.teardown_host(net_plan(), self.layout.root)
        except podnet.NetworkError as err:
            say(f"warning: pod network clean-up: {err}")
            removed = []
        if removed and not quiet:
            say(f"removed {', '.join(removed)}")
        for stale in (self.layout.etcd_data, self.layout.state, self.layout.prometheus_data):
            subprocess.run(["rm", "-rf", str(stale)], check=True)
        if not quiet:
            say(f"local cluster stopped; logs kept in {self.layout.logs}")

    # reporting --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        comps: list[dict[str, Any]] = []
        total = 0
        for proc in self.processes:
            alive = proc.alive()
            rss = rss_bytes(proc.pid) if alive else 0
            total += rss
            comps.append(
                {
                    "name": proc.name,
                    "pid": proc.pid,
                    "alive": alive,
                    "rss_bytes": rss,
                }
            )
        return {
            "kubernetes": versions.KUBERNETES,
            "server": self.layout.server,
            "kubeconfig": str(self.layout.kubeconfig),
            "ready": self.ready(),
            "components": comps,
            "rss_bytes": total,
            "logs": str(self.layout.logs),
        }


def say(msg: str) -> None:
    print(f">> {msg}", flush=True)


def node_ready(api: Api) -> bool:
    node = api.get_json(f"/api/v1/nodes/{NODE_NAME}")
    conditions = (node or {}).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def ancestors() -> set[int]:
    """This process and its parents: never candidates for a sweep."""
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def pod_processes(marker: bytes) -> list[int]:
    """Pids whose environment holds ``marker`` (a NAME=value entry), except this
    process and its ancestors."""
    found = []
    skip = ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _binding(
    kind: str, name: str, role_kind: str, role: str, subject: dict[str, str], namespace: str = ""
) -> dict[str, Any]:
    meta: dict[str, str] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [subject],
    }


def kubelet_api_rbac() -> str:
    """The API server's client for the kubelet API may use all of it (logs, exec, ...)."""
    user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_API_CLIENT}
    return yaml.safe_dump(
        _binding(
            "ClusterRoleBinding",
            "modelpilot-local:kubelet-api-admin",
            "ClusterRole",
            "system:kubelet-api-admin",
            user,
        )
    )


def metrics_server_manifests(node_ip: str, port: int, ca_bundle: str) -> str:
    """metrics-server's objects, as in its v0.8.0 manifests (manifests/base): the
    ServiceAccount and RBAC, the Service, and the APIService (with the cluster CA as
    caBundle instead of insecureSkipTLSVerify). Its pod is a process on the host here,
    so the Service has no selector and an EndpointSlice of ours names where it listens."""
    sa = {"kind": "ServiceAccount", "name": "metrics-server", "namespace": "kube-system"}
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "metrics-server", "namespace": "kube-system"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {
                "name": "system:aggregated-metrics-reader",
                "labels": {
                    f"rbac.authorization.k8s.io/aggregate-to-{r}": "true"
                    for r in ("view", "edit", "admin")
                },
            },
            "rules": [
                {
                    "apiGroups": ["metrics.k8s.io"],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        _binding(
            "RoleBinding",
            "metrics-server-auth-reader",
            "Role",
            "extension-apiserver-authentication-reader",
            sa,
            namespace="kube-system",
        ),
        _binding(
            "ClusterRoleBinding",
            "metrics-server:system:auth-delegator",
            "ClusterRole",
            "system:auth-delegator",
            sa,
        ),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:metrics-server"},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {
                    "apiGroups": [""],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        _binding(
            "ClusterRoleBinding",
            "system:metrics-server",
            "ClusterRole",
            "system:metrics-server",
            sa,
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "metrics-server",
                "namespace": "kube-system",
                "labels": {"k8s-app": "metrics-server"},
            },
            "spec": {
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "metrics-server-node",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "metrics-server",
                    "endpointslice.kubernetes.io/managed-by": "modelpilot-local-cluster",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": [node_ip], "conditions": {"ready": True}, "nodeName": NODE_NAME}
            ],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {
                "name": "v1beta1.metrics.k8s.io",
                "labels": {"k8s-app": "metrics-server"},
            },
            "spec": {
                "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "caBundle": ca_bundle,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]
    return yaml.safe_dump_all(docs)


def prometheus_rbac() -> str:
    rules = [
        {
            "apiGroups": [""],
            "resources": ["pods", "services", "endpoints", "nodes"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "modelpilot-local-prometheus"},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "modelpilot-local-prometheus"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "modelpilot-local-prometheus",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": PROMETHEUS_USER}
        ],
    }
    return yaml.safe_dump_all([role, binding])


def traefik_rbac() -> str:
    """The ClusterRole Traefik's documentation lists for its kubernetesGateway provider,
    bound to the client certificate's user (the pods rule, for OpenTelemetry, left out)."""
    read = ["get", "list", "watch"]
    gateway_kinds = [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "tcproutes",
        "tlsroutes",
        "referencegrants",
        "backendtlspolicies",
    ]
    rules = [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["services", "secrets", "configmaps"], "verbs": read},
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": ["gateway.networking.k8s.io"], "resources": gateway_kinds, "verbs": read},
        {
            "apiGroups": ["gateway.networking.k8s.io"],
            "resources": [f"{k}/status" for k in gateway_kinds],
            "verbs": ["update"],
        },
    ]
    name = "modelpilot-local-traefik"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TRAEFIK_USER}
        ],
    }
    return yaml.safe_dump_all([role, binding])


def traefik_config(layout: Layout) -> str:
    """Traefik's static configuration: one entry point for the Gateway's listener, one for
    /ping and the API, and the kubernetesGateway provider (its client from KUBECONFIG)."""
    ports = layout.ports
    config = {
        # Nothing leaves the machine: no version check, no anonymous statistics.
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        # The provider maps a Gateway listener to the entry point with the same port.
        "entryPoints": {
            "web": {"address": f"127.0.0.1:{ports.gateway}"},
            "traefik": {"address": f"127.0.0.1:{ports.gateway_admin}"},
        },
        "ping": {"entryPoint": "traefik"},
        # /api/rawdata shows the routers and weighted services Traefik built from the routes.
        "api": {"insecure": True, "dashboard": False},
        "providers": {
            # A weight change reaches the data plane within about this long.
            "providersThrottleDuration": "500ms",
            "kubernetesGateway": {"statusAddress": {"ip": "127.0.0.1"}},
        },
        "log": {"level": "INFO", "noColor": True},
        "accessLog": {"filePath": str(layout.log("traefik-access")), "format": "json"},
    }
    return yaml.safe_dump(config, sort_keys=False)


def traefik_env(base: Mapping[str, str], kubeconfig: Path) -> dict[str, str]:
    """Traefik's environment: the cluster's kubeconfig (the provider's client takes it from
    KUBECONFIG), never an in-cluster identity nor a proxy between it and the pods."""
    drop = {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}
    env = {k: v for k, v in base.items() if k not in drop and not k.lower().endswith("_proxy")}
    env["KUBECONFIG"] = str(kubeconfig)
    return env


def gateway_manifests(layout: Layout) -> str:
    """The GatewayClass Traefik controls and the Gateway HTTPRoutes of any namespace attach
    to, its one HTTP listener on Traefik's ``web`` entry point."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}}
    gateway_class = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": GATEWAY_CLASS},
        "spec": {"controllerName": GATEWAY_CONTROLLER},
    }
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
        "spec": {
            "gatewayClassName": GATEWAY_CLASS,
            "listeners": [
                {
                    "name": "http",
                    "protocol": "HTTP",
                    "port": layout.ports.gateway,
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }
            ],
        },
    }
    return yaml.safe_dump_all([namespace, gateway_class, gateway])


def conditions_true(obj: dict[str, Any] | None, *types: str) -> bool:
    """Every condition in ``types`` is True on ``obj`` and observed its latest generation."""
    if obj is None:
        return False
    generation = obj.get("metadata", {}).get("generation")
    found = {
        c.get("type"): c
        for c in (obj.get("status") or {}).get("conditions") or []
        if isinstance(c, dict)
    }
    for t in types:
        c = found.get(t)
        if c is None or c.get("status") != "True":
            return False
        if generation is not None and c.get("observedGeneration") not in (None, generation):
            return False
    return True


def gateway_programmed(api: Api) -> bool:
    gw = api.get_json(
        f"/apis/gateway.networking.k8s.io/v1/namespaces/{GATEWAY_NAMESPACE}/gateways/{GATEWAY_NAME}"
    )
    return conditions_true(gw, "Accepted", "Programmed")


def prometheus_config(layout: Layout) -> str:
    """Pod discovery with the ``prometheus.io/*`` scrape annotations modelpilot renders."""
    pki = layout.pki
    sd = {
        "role": "pod",
        "api_server": layout.server,
        "tls_config": {
            "ca_file": str(pki / "ca.crt"),
            "cert_file": str(pki / "prometheus.crt"),
            "key_file": str(pki / "prometheus.key"),
        },
    }
    ann = "__meta_kubernetes_pod_annotation_prometheus_io_"
    relabel = [
        {"source_labels": [f"{ann}scrape"], "action": "keep", "regex": "true"},
        {"source_labels": ["__meta_kubernetes_pod_phase"], "action": "keep", "regex": "Running"},
        {"source_labels": [f"{ann}scheme"], "target_label": "__scheme__", "regex": "(https?)"},
        {"source_labels": [f"{ann}path"], "target_label": "__metrics_path__", "regex": "(.+)"},
        {
            "source_labels": ["__address__", f"{ann}port"],
            "regex": r"([^:]+)(?::\d+)?;(\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    config = {
        # Short intervals: tests and the demo wait for fresh samples.
        "global": {"scrape_interval": "2s", "scrape_timeout": "1s", "evaluation_interval": "2s"},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "kubernetes_sd_configs": [sd],
                "relabel_configs": relabel,
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    parser.add_argument("verb", choices=["build", "up", "down", "status", "env"])
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.add_argument("--no-node", action="store_true", help="up: no node agent")
    parser.add_argument("--prometheus", action="store_true", help="up: start Prometheus too")
    args = parser.parse_args(argv)
    try:
        if args.verb == "build":
            buildmod.build()
        elif args.verb == "up":
            buildmod.build()
            Cluster().up(node=not args.no_node, prometheus=args.prometheus)
        elif args.verb == "down":
            Cluster().down()
        elif args.verb == "env":
            cluster = Cluster()
            print(f"export KUBECONFIG={cluster.layout.kubeconfig}")
            print(f'export PATH="{cluster.cache.bin}:$PATH"')
        else:
            st = Cluster().status()
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                print_status(st)
            return 0 if st["ready"] else 3
    except (ClusterError, buildmod.BuildError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def print_status(st: dict[str, Any]) -> None:
    state = "ready" if st["ready"] else "not ready"
    print(f"local cluster {st['kubernetes']} at {st['server']}: {state}")
    for c in st["components"]:
        mem = f"{c['rss_bytes'] / 2**20:7.1f} MiB" if c["alive"] else "  stopped"
        print(f"  {c['name']:<26} pid {c['pid']:<8} {mem}")
    if st["components"]:
        print(f"  {'total':<26} {'':<12} {st['rss_bytes'] / 2**20:7.1f} MiB")
    print(f"kubeconfig: {st['kubeconfig']}\nlogs:       {st['logs']}")


if __name__ == "__main__":
    sys.exit(main())
