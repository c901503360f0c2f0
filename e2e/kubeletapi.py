"""The node agent's kubelet API: resource metrics, container logs and health over HTTPS.

A kubelet serves an authenticated HTTPS endpoint on its node address (port 10250 on a
real node); the API server calls it for ``kubectl logs`` and metrics-server scrapes
``/metrics/resource`` from it. The node agent serves the same paths on the node's
InternalIP (``10.244.<16N>.1``) at :attr:`e2e.cluster.Ports.kubelet` and publishes the port
in the Node's ``status.daemonEndpoints.kubeletEndpoint.Port``:

* ``/metrics/resource``: the kubelet's resource-metrics text format, the metric names and
  labels metrics-server v0.8 decodes (``node_cpu_usage_seconds_total``,
  ``node_memory_working_set_bytes``, ``container_cpu_usage_seconds_total``,
  ``container_memory_working_set_bytes``, ``container_start_time_seconds``, the pod
  totals and ``scrape_error``), every sample with its timestamp in milliseconds;
* ``/containerLogs/{namespace}/{pod}/{container}``: the container's output, with
  ``tailLines``, ``limitBytes``, ``previous`` (the run before the last restart) and
  ``follow``; ``timestamps`` is accepted but adds nothing, since the node keeps a
  container's output as the process wrote it, without a time per line;
* ``/healthz``: ``ok``, to anyone (like a kubelet's separate healthz port).

Where the numbers come from: a container is the process group the agent started (see
:mod:`e2e.pods`). Its CPU time is the sum over the group's live processes of
``utime + stime`` from ``/proc/<pid>/stat`` (or the scheduler's nanosecond
``sum_exec_runtime`` from ``/proc/<pid>/schedstat`` when that is larger, which keeps a
mostly idle process from reading as zero) and of ``cutime + cstime``, the children each
has waited for; a process that exited with no parent left in the group adds the last
value read of it. The counter is held where a reading would go back (a child that exited
but was not yet waited for). The working set is the sum of the processes' resident
memory. The node's CPU is the machine's non-idle time from ``/proc/stat``; its working
set is ``MemTotal - MemAvailable``. Without a cgroup per container this is what a
kubelet would read from the container's cgroup, short of the CPU time of orphans since
their last reading.

Who may call: like a kubelet with webhook authentication and authorization. A caller
presents a client certificate signed by the cluster CA (its user is the common name, its
groups the organizations) or a bearer token (checked with a TokenReview); every request
but ``/healthz`` is then authorized with a SubjectAccessReview on the node object, with the
kubelet's subresources: ``nodes/metrics`` for ``/metrics/...``, ``nodes/proxy`` for the
rest (container logs included). Answers are cached, allowed ones for five minutes and
denied ones for thirty seconds, as a kubelet does.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from e2e.pods import KubeRequests

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
ALLOWED_TTL = 300.0
DENIED_TTL = 30.0
FOLLOW_POLL = 0.25
# The line the node agent writes into a container's log before each start (e2e.pods).
RUN_MARKER = re.compile(rb"^--- \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ start \[.*\n", re.MULTILINE)


# --- what the agent runs -------------------------------------------------------------------


@dataclass(frozen=True)
class RunningContainer:
    """One running container, as the agent knows it."""

    namespace: str
    pod: str
    pod_uid: str
    name: str
    pid: int  # the leader of the container's process group
    started: float  # seconds since the epoch


@dataclass(frozen=True)
class LogSource:
    """Where a container's output is kept, and whether it still runs."""

    path: Path
    running: Callable[[], bool]


class Node(Protocol):
    """What the kubelet API needs from the node agent."""

    def running_containers(self) -> list[RunningContainer]: ...

    def log_source(self, namespace: str, pod: str, container: str) -> LogSource | None: ...


# --- /proc accounting -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    pid: int
    ppid: int
    pgid: int
    start_ticks: int  # the kernel's start time, which tells a recycled pid apart
    cpu_seconds: float  # its own, all threads
    children_cpu_seconds: float  # of the children it has waited for
    rss_bytes: int


def read_proc(pid: int) -> ProcSample | None:
    """One process's group, CPU time and resident memory; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 of proc(5), state: ppid is field 4, pgrp 5, utime 14, stime 15,
    # cutime 16, cstime 17, starttime 22, rss 24.
    if fields[0] == "Z":
        return None
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    with contextlib.suppress(OSError, ValueError, IndexError):
        runtime_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        cpu = max(cpu, runtime_ns / 1e9)
    return ProcSample(
        pid=pid,
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        start_ticks=int(fields[19]),
        cpu_seconds=cpu,
        children_cpu_seconds=(int(fields[13]) + int(fields[14])) / CLOCK_TICKS,
        rss_bytes=int(fields[21]) * PAGE_SIZE,
    )


def scan_groups(pgids: set[int]) -> dict[int, list[ProcSample]]:
    """The live processes of each of the given process groups."""
    found: dict[int, list[ProcSample]] = {g: [] for g in pgids}
    if not pgids:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        sample = read_proc(int(entry.name))
        if sample is not None and sample.pgid in found:
            found[sample.pgid].append(sample)
    return found


@dataclass
class _Counter:
    """A container's cumulative CPU: the live processes (with the children they waited
    for) plus the last reading of those that exited without a parent in the group."""

    seen: dict[tuple[int, int], tuple[float, int]] = field(default_factory=dict)  # cpu, ppid
    exited: float = 0.0
    last: float = 0.0


@dataclass(frozen=True)
class ContainerUsage:
    container: RunningContainer
    cpu_seconds: float
    memory_bytes: int


class Accounting:
    """Turns /proc readings into monotonic per-container CPU counters."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, str, int], _Counter] = {}

    def sample(self, containers: list[RunningContainer]) -> list[ContainerUsage]:
        groups = scan_groups({c.pid for c in containers})
        out: list[ContainerUsage] = []
        with self.lock:
            keys = set()
            for c in containers:
                key = (c.pod_uid, c.name, c.pid)
                keys.add(key)
                counter = self.counters.setdefault(key, _Counter())
                live = {(p.pid, p.start_ticks): p for p in groups.get(c.pid, [])}
                live_pids = {p.pid for p in live.values()}
                for ident, (cpu, ppid) in list(counter.seen.items()):
                    if ident not in live:
                        # A parent in the group counts it among its children once it has
                        # waited for it; an orphan's time would be lost without this.
                        if ppid not in live_pids:
                            counter.exited += cpu
                        del counter.seen[ident]
                for ident, p in live.items():
                    cpu = p.cpu_seconds + p.children_cpu_seconds
                    counter.seen[ident] = (cpu, p.ppid)
                current = counter.exited + sum(cpu for cpu, _ in counter.seen.values())
                # A child exited but not yet waited for reads as neither: hold the value.
                total = max(counter.last, current)
                counter.last = total
                if not live:
                    # Exited, not yet reaped: metrics-server drops a whole pod whose
                    # container reads zero memory, so the container is left out instead.
                    continue
                memory = sum(p.rss_bytes for p in live.values())
                out.append(ContainerUsage(c, total, memory))
            for stale in set(self.counters) - keys:
                del self.counters[stale]
        return out


def node_cpu_seconds() -> float:
    """The machine's non-idle CPU time (user, nice, system, irq, softirq, steal)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def node_memory_working_set() -> int:
    info: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        info[name] = int(rest.split()[0]) * 1024
    return info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0))


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}"


def render_resource_metrics(usage: list[ContainerUsage], now: float | None = None) -> str:
    """The kubelet's /metrics/resource text (Prometheus exposition format 0.0.4)."""
    stamp = int((now if now is not None else time.time()) * 1000)
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} [STABLE] {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value!r} {stamp}")

    def container_labels(u: ContainerUsage) -> str:
        c = u.container
        return _labels(container=c.name, namespace=c.namespace, pod=c.pod)

    pods: dict[tuple[str, str], list[ContainerUsage]] = {}
    for u in usage:
        pods.setdefault((u.container.namespace, u.container.pod), []).append(u)
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        [(container_labels(u), round(u.cpu_seconds, 9)) for u in usage],
    )
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        [(container_labels(u), float(u.memory_bytes)) for u in usage],
    )
    family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        [(container_labels(u), round(u.container.started, 3)) for u in usage],
    )
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        [("", round(node_cpu_seconds(), 3))],
    )
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        [("", float(node_memory_working_set()))],
    )
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        [
            (_labels(namespace=ns, pod=pod), round(sum(u.cpu_seconds for u in us), 9))
            for (ns, pod), us in sorted(pods.items())
        ],
    )
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        [
            (_labels(namespace=ns, pod=pod), float(sum(u.memory_bytes for u in us)))
            for (ns, pod), us in sorted(pods.items())
        ],
    )
    lines.append(
        "# HELP scrape_error [ALPHA] 1 if there was an error while getting container "
        "metrics, 0 otherwise"
    )
    lines.append("# TYPE scrape_error gauge")
    lines.append("scrape_error 0")
    return "\n".join(lines) + "\n"


# --- container logs -------------------------------------------------------------------------


def split_runs(data: bytes) -> list[bytes]:
    """A log file's runs of the container, oldest first, without the agent's start lines."""
    marks = list(RUN_MARKER.finditer(data))
    if not marks:
        return [data]
    return [data[m.end() : nxt.start() if nxt else len(data)]
            for m, nxt in zip(marks, [*marks[1:], None], strict=True)]  # fmt: skip


def tail_lines(data: bytes, count: int) -> bytes:
    if count < 0:
        return data
    if count == 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


@dataclass(frozen=True)
class LogQuery:
    tail: int = -1
    limit_bytes: int = -1
    previous: bool = False
    follow: bool = False

    @classmethod
    def parse(cls, query: dict[str, list[str]]) -> LogQuery:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        def flag(name: str) -> bool:
            return (one(name) or "").lower() in ("1", "true", "yes")

        tail = one("tailLines")
        limit = one("limitBytes")
        return cls(
            tail=int(tail) if tail not in (None, "") else -1,
            limit_bytes=int(limit) if limit not in (None, "") else -1,
            previous=flag("previous"),
            follow=flag("follow"),
        )


def read_log(path: Path, query: LogQuery) -> tuple[bytes, int] | None:
    """The requested output and the file offset it ends at; None when ``previous`` asks
    for a run that does not exist."""
    data = path.read_bytes()
    runs = split_runs(data)
    if query.previous:
        if len(runs) < 2:
            return None
        chosen = runs[-2]
    else:
        chosen = runs[-1]
    out = tail_lines(chosen, query.tail)
    if query.limit_bytes >= 0:
        out = out[: query.limit_bytes]
    return out, len(data)


# --- authentication and authorization ------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


def caller_from_cert(cert: dict[str, Any] | None) -> Caller | None:
    """The user a verified client certificate names (CN) with its groups (O)."""
    if not cert:
        return None
    cn = ""
    groups: list[str] = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = str(value)
            elif key == "organizationName":
                groups.append(str(value))
    return Caller(cn, tuple(groups)) if cn else None


def subresource(path: str) -> str:
    """The node subresource a kubelet checks for a request path."""
    for prefix, sub in (
        ("/stats", "stats"),
        ("/metrics", "metrics"),
        ("/logs", "log"),
        ("/spec", "spec"),
        ("/checkpoint", "checkpoint"),
    ):
        if path == prefix or path.startswith(prefix + "/"):
            return sub
    return "proxy"


VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
         "DELETE": "delete"}  # fmt: skip


class Authorizer:
    """TokenReviews and SubjectAccessReviews through the API server, with a cache."""

    def __init__(self, kube: KubeRequests, node: str) -> None:
        self.kube = kube
        self.node = node
        self.lock = threading.Lock()
        self.decisions: dict[tuple[Any, ...], tuple[bool, float]] = {}
        self.tokens: dict[str, tuple[Caller | None, float]] = {}

    def authenticate_token(self, token: str) -> Caller | None:
        with self.lock:
            hit = self.tokens.get(token)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token}}  # fmt: skip
        code, raw = self.kube.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)
        caller: Caller | None = None
        if code == 201:
            status = json.loads(raw).get("status") or {}
            if status.get("authenticated"):
                user = status.get("user") or {}
                extra = tuple(sorted((k, tuple(v)) for k, v in (user.get("extra") or {}).items()))
                caller = Caller(
                    str(user.get("username", "")),
                    tuple(user.get("groups") or ()),
                    str(user.get("uid", "")),
                    extra,
                )
        with self.lock:
            self.tokens[token] = (caller, time.monotonic() + (120 if caller else 10))
        return caller

    def allowed(self, caller: Caller, verb: str, sub: str) -> bool:
        key = (caller, verb, sub)
        with self.lock:
            hit = self.decisions.get(key)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        spec: dict[str, Any] = {
            "user": caller.user,
            "groups": list(caller.groups),
            "resourceAttributes": {
                "verb": verb,
                "group": "",
                "version": "v1",
                "resource": "nodes",
                "subresource": sub,
                "name": self.node,
            },
        }
        if caller.uid:
            spec["uid"] = caller.uid
        if caller.extra:
            spec["extra"] = {k: list(v) for k, v in caller.extra}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": spec}  # fmt: skip
        code, raw = self.kube.request(
            "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body
        )
        ok = code == 201 and bool((json.loads(raw).get("status") or {}).get("allowed"))
        with self.lock:
            self.decisions[key] = (ok, time.monotonic() + (ALLOWED_TTL if ok else DENIED_TTL))
        return ok


# --- the server -----------------------------------------------------------------------------


class KubeletApi:
    """The HTTPS server; :meth:`start` runs it on a thread of its own."""

    def __init__(
        self,
        node: Node,
        authorizer: Authorizer,
        address: str,
        port: int,
        cert: Path,
        key: Path,
        client_ca: Path,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.node = node
        self.authorizer = authorizer
        self.accounting = Accounting()
        self.log = log
        self.stopping = threading.Event()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(client_ca))
        # Optional, as on a kubelet: a caller without a certificate may bring a token.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        self.server = _Server((address, port), _handler_for(self), ctx)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="kubelet-api", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        ctx: ssl.SSLContext,
    ) -> None:
        self.ctx = ctx
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs on the request's own thread, so a slow client holds up
        # nobody else.
        request.settimeout(30)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            # The TLS socket took over the connection: the server closes only the husk.
            tls.close()


def _handler_for(api: KubeletApi) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_Handler):
        kubelet = api

    return Handler


class _Handler(http.server.BaseHTTPRequestHandler):
    kubelet: KubeletApi
    server_version = "modelpilot-node-agent"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        del format, args  # scrapes every few seconds: not worth a line each

    def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _caller(self) -> Caller | None:
        sock = self.connection
        cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
        caller = caller_from_cert(cert)
        if caller is not None:
            return caller
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return self.kubelet.authorizer.authenticate_token(auth[7:].strip())
        return None

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path
        if path in ("/healthz", "/healthz/ping"):
            self._send(200, b"ok")
            return
        try:
            caller = self._caller()
        except (OSError, ValueError) as err:
            self._send(500, f"authentication failed: {err}\n".encode())
            return
        if caller is None:
            self._send(401, b"Unauthorized\n")
            return
        sub = subresource(path)
        verb = VERBS.get(self.command, "get")
        try:
            ok = self.kubelet.authorizer.allowed(caller, verb, sub)
        except (OSError, ValueError) as err:
            self._send(500, f"authorization failed: {err}\n".encode())
            return
        if not ok:
            msg = (
                f"Forbidden (user={caller.user}, verb={verb}, resource=nodes, subresource={sub})\n"
            )
            self._send(403, msg.encode())
            return
        query = urllib.parse.parse_qs(parsed.query)
        if path == "/metrics/resource":
            self._metrics()
        elif path.startswith("/containerLogs/"):
            self._logs(path, query)
        else:
            self._send(404, b"404 page not found\n")

    def _metrics(self) -> None:
        containers = self.kubelet.node.running_containers()
        usage = self.kubelet.accounting.sample(containers)
        body = render_resource_metrics(usage).encode()
        self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")

    def _logs(self, path: str, query: dict[str, list[str]]) -> None:
        parts = [urllib.parse.unquote(p) for p in path.split("/")[2:] if p]
        if len(parts) != 3:
            self._send(400, b"expected /containerLogs/{namespace}/{pod}/{container}\n")
            return
        ns, pod, container = parts
        try:
            q = LogQuery.parse(query)
        except ValueError as err:
            self._send(400, f"bad query: {err}\n".encode())
            return
        source = self.kubelet.node.log_source(ns, pod, container)
        if source is None or not source.path.exists():
            self._send(404, f'container "{container}" in pod "{pod}" is not known\n'.encode())
            return
        found = read_log(source.path, q)
        if found is None:
            msg = f'previous terminated container "{container}" in pod "{pod}" not found\n'
            self._send(400, msg.encode())
            return
        out, offset = found
        if not q.follow or q.previous:
            self._send(200, out)
            return
        # Streamed until the container stops or restarts, or the caller goes away.
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(out)
            self.wfile.flush()
            for chunk in follow(source, offset, self.kubelet.stopping):
                self.wfile.write(chunk)
                self.wfile.flush()
        except (OSError, ssl.SSLError):
            pass


def follow(source: LogSource, offset: int, stop: threading.Event) -> Iterator[bytes]:
    """New output of the current run, as it is written, until the run ends."""
    pending = b""
    while not stop.is_set():
        # Liveness first: output written before the process ended is then on file.
        alive = source.running()
        try:
            size = source.path.stat().st_size
        except OSError:
            return
        if size > offset:
            with source.path.open("rb") as f:
                f.seek(offset)
                data = f.read(size - offset)
            offset += len(data)
            pending += data
            mark = RUN_MARKER.search(pending)
            if mark is not None:  # the container restarted: this run is over
                if mark.start():
                    yield pending[: mark.start()]
                return
            # A last partial line that may become the agent's start line waits.
            cut = pending.rfind(b"\n") + 1
            tail = pending[cut:]
            if tail and (tail.startswith(b"---") or b"---".startswith(tail)):
                ready, pending = pending[:cut], tail
            else:
                ready, pending = pending, b""
            if ready:
                yield ready
            continue
        if not alive:
            if pending:
                yield pending
            return
        stop.wait(FOLLOW_POLL)
