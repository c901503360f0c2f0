"""Runs one pod as local processes, the way a kubelet runs it in containers.

Owns a pod's folder (``<cluster>/pods/<namespace>_<name>_<uid>/``: volumes, logs, a
home and tmp folder) and its processes. One :class:`PodRunner` thread per pod:

* volumes become folders (emptyDir, configMap, secret, downwardAPI, projected with
  service-account tokens; hostPath is the host path itself), and every path under a
  volume's ``mountPath`` in a container's command, args, env and workingDir is rewritten
  to the folder that stands for it;
* init containers run in order, then the containers, each in a process group of its own,
  with restarts and back-off by the restart policy;
* the pod gets a network namespace of its own on the node's bridge (CNI, see
  :mod:`e2e.podnet`) before anything runs, and every container and exec probe runs in it;
* HTTP and TCP probes (startup, readiness, liveness) run against the pod IP;
* the status (phase, conditions, container states, pod IP) is patched through the
  status subresource whenever it changes;
* deletion sends SIGTERM to each process group, SIGKILL after the grace period, then
  removes the pod object.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from e2e import images
from e2e.podnet import NetworkError, PodNet

HERE = Path(__file__).resolve().parent
BACKOFF_START = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0
TICK = 0.25


class KubeRequests(Protocol):
    """Requests to the API server (the node agent's client); all the kubelet API needs."""

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float = 5,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]: ...


class Kube(KubeRequests, Protocol):
    """What a pod runner needs from the API server."""

    def get_json(self, path: str) -> dict[str, Any] | None: ...


class ConfigError(Exception):
    """A container cannot be made from the pod spec (CreateContainerConfigError)."""


class ImageError(Exception):
    """The image is not mapped to a local command (ErrImagePull)."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity (``250m``, ``4Gi``, ``1e3``) as a number."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?\d+)?)([a-zA-Z]*)", str(text).strip())
    if not m:
        raise ConfigError(f"bad quantity {text!r}")
    number, suffix = float(m.group(1)), m.group(2)
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    decimal = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9,
               "T": 1e12, "P": 1e15, "E": 1e18}  # fmt: skip
    if suffix in binary:
        return number * binary[suffix]
    if suffix in decimal:
        return number * decimal[suffix]
    raise ConfigError(f"bad quantity suffix in {text!r}")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, text)


@dataclass
class Mounts:
    """Container paths (mountPath) and the local folders that stand for them."""

    pairs: list[tuple[str, str]] = field(default_factory=list)

    def add(self, mount_path: str, local: str) -> None:
        self.pairs.append((mount_path.rstrip("/") or "/", local))
        self.pairs.sort(key=lambda p: len(p[0]), reverse=True)

    def path(self, value: str) -> str:
        for mount, local in self.pairs:
            if value == mount or value.startswith(mount + "/"):
                return local + value[len(mount) :]
        return value

    def rewrite(self, value: str) -> str:
        """Rewrite every mount path inside ``value``: whole paths, ``--flag=/path``,
        ``KEY=/path`` and paths inside a shell snippet (``sh -c "cat /etc/x > /work/y"``).

        A mount path matches only as a whole path component: after a start, a blank, a
        quote, ``=`` or ``:``, and before ``/``, an end, a blank, a quote or ``;``.
        """
        if not self.pairs:
            return value
        alternatives = "|".join(re.escape(m) for m, _ in self.pairs if m != "/")
        if not alternatives:
            return value
        pattern = rf"(?<![^\s'\"=:])({alternatives})(?=/|$|[\s'\";:])"
        table = dict(self.pairs)
        return re.sub(pattern, lambda m: table[m.group(1)], value)


@dataclass
class Container:
    """One container's process and the state the kubelet would report for it."""

    spec: dict[str, Any]
    init: bool
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    started_mono: float = 0.0
    started_wall: float = 0.0  # seconds since the epoch, for the resource metrics
    restarts: int = 0
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "PodInitializing"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    started: bool = False  # startup probe passed (or none)
    next_start: float = 0.0
    backoff: float = BACKOFF_START
    probe_next: dict[str, float] = field(default_factory=dict)
    probe_runs: dict[str, tuple[int, int]] = field(default_factory=dict)  # (ok, failed) streaks
    done: bool = False  # terminated for good (restart policy says no restart)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def alive(self) -> bool:
        """Like :meth:`running`, for other threads: it never reaps the process."""
        proc = self.proc
        return proc is not None and proc.returncode is None and _live(proc.pid)


def _live(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Network(Protocol):
    """Where pods get their network namespace and address (e2e.podnet.PodNetwork)."""

    def attach(self, uid: str, namespace: str, name: str, want_ip: str | None) -> PodNet: ...

    def detach(self, uid: str) -> None: ...


class PodRunner(threading.Thread):
    """Runs one pod until it is deleted or the agent stops."""

    def __init__(
        self,
        kube: Kube,
        pod: dict[str, Any],
        network: Network,
        host_ip: str,
        root: Path,
        base_env: dict[str, str],
        node_allocatable: dict[str, str],
        on_exit: Callable[[PodRunner], None],
        event: Callable[[dict[str, Any], str, str, str], None],
    ) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kube = kube
        self.pod = pod
        self.uid = str(meta["uid"])
        self.ns = str(meta["namespace"])
        self.pod_name = str(meta["name"])
        self.network = network
        self.net: PodNet | None = None
        self.ip = ""  # set once the pod's network is attached
        self.host_ip = host_ip
        self.dir = root / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.base_env = base_env
        self.allocatable = node_allocatable
        self.on_exit = on_exit
        self.event = event
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.grace: float | None = None  # set when the pod is being deleted
        self.delete_object = False
        self.mounts = Mounts()
        spec = pod["spec"]
        self.restart_policy = str(spec.get("restartPolicy", "Always"))
        self.init_containers = [
            Container(c, True, self.dir / "logs" / f"{c['name']}.log")
            for c in spec.get("initContainers") or []
        ]
        self.containers = [
            Container(c, False, self.dir / "logs" / f"{c['name']}.log")
            for c in spec.get("containers") or []
        ]
        self.phase = "Pending"
        self.init_done = not self.init_containers
        self.start_time = now()
        self.conditions: dict[str, dict[str, Any]] = {}
        self.last_status: dict[str, Any] | None = None
        self.fatal: tuple[str, str] | None = None  # (reason, message) for every container
        self.blocked: tuple[str, str] | None = None  # waiting for volumes (reason, message)

    # --- control from the agent ---------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        with self.lock:
            self.pod = pod
        deletion = pod["metadata"].get("deletionTimestamp")
        if deletion and self.grace is None:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            self.terminate(float(grace), delete_object=True)

    def running_containers(self) -> list[Container]:
        """The containers whose process runs now (safe from other threads)."""
        return [c for c in [*self.init_containers, *self.containers] if c.alive()]

    def container(self, name: str) -> Container | None:
        return next((c for c in [*self.init_containers, *self.containers] if c.name == name), None)

    def terminate(self, grace: float, delete_object: bool) -> None:
        """Stop every process (SIGTERM, SIGKILL after ``grace``), then end the thread."""
        self.grace = grace
        self.delete_object = delete_object
        self.stop_event.set()

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception as err:  # a crash here must not leave processes behind
            self.event(self.pod, "Warning", "AgentError", f"{type(err).__name__}: {err}")
            self._kill_all(0)
            raise
        finally:
            self.on_exit(self)

    def _attach_network(self) -> bool:
        """The pod's sandbox: its network namespace and address, retried like a kubelet."""
        want = self.pod.get("status", {}).get("podIP") or None
        warned = False
        while not self.stop_event.is_set():
            try:
                self.net = self.network.attach(self.uid, self.ns, self.pod_name, want)
            except NetworkError as err:
                if not warned:
                    self.event(self.pod, "Warning", "FailedCreatePodSandBox", str(err))
                    warned = True
                self.blocked = ("ContainerCreating", f"pod network: {err}")
                self._sync_status()
                self.stop_event.wait(1.0)
                continue
            self.ip = self.net.ip
            self.blocked = None
            return True
        return False

    def _run(self) -> None:
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        for sub in ("home", "tmp", "volumes"):
            (self.dir / sub).mkdir(exist_ok=True)
        if not self._attach_network():
            return
        self._set_condition("PodReadyToStartContainers", True)
        self._set_condition("Initialized", self.init_done)
        logs = ", ".join(str(c.log) for c in [*self.init_containers, *self.containers])
        self.event(self.pod, "Normal", "LogFiles", f"container logs: {logs}")
        volumes_ready = False
        retry_at = 0.0
        while not self.stop_event.is_set():
            if not volumes_ready and time.monotonic() >= retry_at:
                # Like a kubelet: a missing ConfigMap or Secret may appear later (a new
                # namespace's kube-root-ca.crt does), so mounting is retried.
                try:
                    self.mounts = Mounts()
                    self._prepare_volumes()
                    volumes_ready = True
                    self.blocked = None
                except ConfigError as err:
                    if self.blocked is None:
                        self.event(self.pod, "Warning", "FailedMount", str(err))
                    self.blocked = ("ContainerCreating", str(err))
                    retry_at = time.monotonic() + 1.0
            if volumes_ready and self.fatal is None:
                self._step()
            self._sync_status()
            self.stop_event.wait(TICK)
        grace = self.grace if self.grace is not None else 0
        self._kill_all(grace)
        if self.delete_object:
            self._sync_status()
            self._delete_object()

    def _step(self) -> None:
        if not self.init_done:
            self._step_init()
            return
        for c in self.containers:
            self._step_container(c)
        if self.restart_policy != "Always" and all(c.done for c in self.containers):
            failed = any(
                c.state.get("terminated", {}).get("exitCode", 0) != 0 for c in self.containers
            )
            self.phase = "Failed" if failed else "Succeeded"
        elif any(c.running() for c in self.containers) or any(c.restarts for c in self.containers):
            self.phase = "Running"

    def _step_init(self) -> None:
        for c in self.init_containers:
            if c.done and c.state.get("terminated", {}).get("exitCode") == 0:
                continue
            if c.running():
                return
            if c.proc is not None:  # it exited
                code = self._reap(c)
                if code == 0:
                    c.done = True
                    continue
                if self.restart_policy == "Never":
                    c.done = True
                    self.phase = "Failed"
                    self.fatal = ("Init:Error", f"init container {c.name} exited {code}")
                    return
                self._schedule_restart(c)
                return
            if time.monotonic() >= c.next_start:
                self._start(c)
            return
        self.init_done = True
        self._set_condition("Initialized", True)

    def _step_container(self, c: Container) -> None:
        if c.done:
            return
        if c.running():
            self._probe(c)
            return
        if c.proc is not None:
            code = self._reap(c)
            policy = self.restart_policy
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                c.done = True
                return
            self._schedule_restart(c)
            return
        if time.monotonic() >= c.next_start:
            self._start(c)

    # --- processes ----------------------------------------------------------------------

    def _start(self, c: Container) -> None:
        try:
            argv, env, cwd = self._command(c)
        except ImageError as err:
            c.state = {"waiting": {"reason": "ErrImagePull", "message": str(err)}}
            self.event(self.pod, "Warning", "Failed", f"container {c.name}: {err}")
            if self.restart_policy == "Never":
                self.phase = "Failed"
                self.fatal = ("ErrImagePull", str(err))
            else:
                # Like a kubelet that cannot pull: stay Pending and retry with back-off,
                # so that a ReplicaSet does not replace the pod in a tight loop.
                c.next_start = time.monotonic() + c.backoff
                c.backoff = min(c.backoff * 2, BACKOFF_MAX)
            return
        except ConfigError as err:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}}
            self.event(self.pod, "Warning", "Failed", f"container {c.name}: {err}")
            c.next_start = time.monotonic() + c.backoff
            return
        c.log.parent.mkdir(parents=True, exist_ok=True)
        with c.log.open("ab") as log:
            log.write(f"--- {now()} start {json.dumps(argv)}\n".encode())
            log.flush()
            try:
                c.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    # Its own process group: termination reaches the children too.
                    start_new_session=True,
                )
            except OSError as err:
                c.state = {"waiting": {"reason": "RunContainerError", "message": str(err)}}
                c.next_start = time.monotonic() + c.backoff
                c.backoff = min(c.backoff * 2, BACKOFF_MAX)
                return
        c.started_at = now()
        c.started_mono = time.monotonic()
        c.started_wall = time.time()
        c.state = {"running": {"startedAt": c.started_at}}
        c.started = not c.spec.get("startupProbe")
        c.ready = False
        c.probe_runs = {}
        c.probe_next = {}
        self.event(
            self.pod, "Normal", "Started", f"container {c.name}: pid {c.proc.pid}, log {c.log}"
        )

    def _reap(self, c: Container) -> int:
        assert c.proc is not None
        code = c.proc.wait()
        # The group may hold children of a shell; they end with their container.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.proc.pid, signal.SIGKILL)
        finished = now()
        reason = "Completed" if code == 0 else "Error"
        term = {
            "terminated": {
                "exitCode": code if code >= 0 else 128 - code,
                "reason": reason,
                "startedAt": c.started_at or finished,
                "finishedAt": finished,
                "containerID": f"process://{c.proc.pid}",
            }
        }
        c.last_state = term
        c.state = term
        c.ready = False
        c.proc = None
        if c.started_mono and time.monotonic() - c.started_mono > BACKOFF_RESET_AFTER:
            c.backoff = BACKOFF_START
        return code if code >= 0 else 128 - code

    def _schedule_restart(self, c: Container) -> None:
        c.restarts += 1
        c.next_start = time.monotonic() + c.backoff
        c.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {c.backoff:.0f}s restarting failed container {c.name}",
            }
        }
        c.backoff = min(c.backoff * 2, BACKOFF_MAX)

    def _kill(self, c: Container, grace: float) -> None:
        if c.proc is None:
            return
        if c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=max(grace, 0.0))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.proc.pid, signal.SIGKILL)
        self._reap(c)

    def _kill_all(self, grace: float) -> None:
        """SIGTERM every container's group at once, then SIGKILL what is left at the end."""
        live = [c for c in [*self.init_containers, *self.containers] if c.running()]
        for c in live:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in live:
            assert c.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for c in [*self.init_containers, *self.containers]:
            if c.proc is not None:
                self._kill(c, 0)
                c.done = True
        if self.phase not in ("Succeeded", "Failed"):
            # A deleted pod ends in a terminal phase, as on a kubelet: Succeeded only if
            # every container exited 0 on SIGTERM.
            codes = [
                c.state.get("terminated", {}).get("exitCode", 1)
                for c in self.containers
                if "terminated" in c.state
            ]
            self.phase = "Succeeded" if codes and not any(codes) else "Failed"

    # --- container definition ----------------------------------------------------------

    def _command(self, c: Container) -> tuple[list[str], dict[str, str], str]:
        spec = c.spec
        image_name = str(spec.get("image", ""))
        image = images.lookup(image_name)
        if image is None:
            known = ", ".join(sorted(images.known_images())) or "none"
            raise ImageError(
                f"image {image_name!r} is not mapped to a local command by the "
                f"modelpilot node agent (known images: {known})"
            )
        env = self._env(c)
        command = [expand(str(a), env) for a in spec.get("command") or []]
        args = [expand(str(a), env) for a in spec.get("args") or []]
        if command:
            program = images.resolve_program(image, command[0])
            if program is None:
                raise ConfigError(
                    f'exec: "{command[0]}": not found in image {image.repository} '
                    f"(it carries {', '.join(sorted(image.programs)) or 'nothing'})"
                )
            argv = [program, *(self.rewrite(a) for a in [*command[1:], *args])]
        else:
            # The image's entrypoint names paths on this machine: only the pod's args
            # may name mounted paths.
            argv = [*image.entrypoint, *(self.rewrite(a) for a in args)]
        # Values the pod set may name mounted paths; the agent's own values do not.
        own = self._own_env()
        env = {k: v if own.get(k) == v else self.rewrite(v) for k, v in env.items()}
        for key, value in image.env.items():
            env.setdefault(key, value.replace("$(POD_IP)", self.ip))
        if self.net is not None:
            argv = [*self.net.enter(), *argv]
        workdir = spec.get("workingDir")
        cwd = self.mounts.path(str(workdir)) if workdir else str(self.dir / "home")
        if not Path(cwd).is_dir():
            Path(cwd).mkdir(parents=True, exist_ok=True)
        for mount in spec.get("volumeMounts") or []:
            if str(mount.get("mountPath")) == "/var/run/secrets/kubernetes.io/serviceaccount":
                env["MODELPILOT_SERVICEACCOUNT_DIR"] = self.mounts.path(str(mount["mountPath"]))
        return argv, env, cwd

    def rewrite(self, value: str) -> str:
        """A value the pod spec gave, as this machine needs it: mounted paths become
        their local folders."""
        return self.mounts.rewrite(value)

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": meta.get("namespace", ""),
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": self.pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
            "status.podIP": self.ip,
            "status.podIPs": self.ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path in simple:
            return str(simple[path])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = (meta.get(path.split(".")[1]) or {}).items()
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items))
        raise ConfigError(f"unsupported fieldRef {path!r}")

    def _resource(self, c: Container, ref: dict[str, Any]) -> str:
        resource = str(ref["resource"])
        kind, _, name = resource.partition(".")
        spec = c.spec
        if ref.get("containerName"):
            spec = next(
                (x for x in self.pod["spec"]["containers"] if x["name"] == ref["containerName"]),
                spec,
            )
        resources = spec.get("resources") or {}
        value = (resources.get(kind) or {}).get(name)
        if value is None:  # an unset limit reads as the node's allocatable, as on a kubelet
            value = self.allocatable.get(name, "0")
        divisor = parse_quantity(str(ref.get("divisor") or "1"))
        return str(math.ceil(parse_quantity(str(value)) / divisor))

    def _object(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.kube.get_json(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")

    def _data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        obj = self._object(kind, name)
        if obj is None:
            if optional:
                return None
            singular = "configmap" if kind == "configmaps" else "secret"
            raise ConfigError(f'{singular} "{name}" not found')
        data = {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
        if kind == "secrets":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        return data

    def _own_env(self) -> dict[str, str]:
        """The environment the agent gives every container, before the pod's own."""
        env = dict(self.base_env)
        env.update(
            {
                "HOSTNAME": self.pod_name,
                "HOME": str(self.dir / "home"),
                "TMPDIR": str(self.dir / "tmp"),
                "MODELPILOT_POD_IP": self.ip,
                "MODELPILOT_POD_UID": self.uid,
                "MODELPILOT_POD": f"{self.ns}/{self.pod_name}",
            }
        )
        # sitecustomize stands in for the service-account mount (see e2e/podsite).
        pythonpath = [str(HERE / "podsite")]
        if self.base_env.get("PYTHONPATH"):
            pythonpath.append(self.base_env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
        return env

    def _env(self, c: Container) -> dict[str, str]:
        env = self._own_env()
        for source in c.spec.get("envFrom") or []:
            prefix = str(source.get("prefix", ""))
            for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
                ref = source.get(key)
                if ref:
                    data = self._data(kind, str(ref["name"]), bool(ref.get("optional")))
                    for k, v in (data or {}).items():
                        env[prefix + k] = v
        for var in c.spec.get("env") or []:
            name = str(var["name"])
            if "valueFrom" not in var:
                env[name] = expand(str(var.get("value", "")), env)
                continue
            src = var["valueFrom"]
            if "fieldRef" in src:
                env[name] = self._field(str(src["fieldRef"]["fieldPath"]))
            elif "resourceFieldRef" in src:
                env[name] = self._resource(c, src["resourceFieldRef"])
            else:
                for kind, key in (("configmaps", "configMapKeyRef"), ("secrets", "secretKeyRef")):
                    ref = src.get(key)
                    if ref is None:
                        continue
                    optional = bool(ref.get("optional"))
                    data = self._data(kind, str(ref["name"]), optional)
                    if data is not None and ref["key"] in data:
                        env[name] = data[str(ref["key"])]
                    elif not optional:
                        raise ConfigError(
                            f"couldn't find key {ref['key']} in {kind[:-1]} {ref['name']}"
                        )
        return env

    # --- volumes ------------------------------------------------------------------------

    def _prepare_volumes(self) -> None:
        folders: dict[str, Path] = {}
        for vol in self.pod["spec"].get("volumes") or []:
            name = str(vol["name"])
            folder = self.dir / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in vol:
                pass
            elif "hostPath" in vol:
                folder = Path(str(vol["hostPath"]["path"]))
            elif "configMap" in vol:
                self._project_data(folder, "configmaps", vol["configMap"])
            elif "secret" in vol:
                ref = dict(vol["secret"])
                ref["name"] = ref.get("secretName")
                self._project_data(folder, "secrets", ref)
            elif "downwardAPI" in vol:
                self._project_fields(folder, vol["downwardAPI"].get("items") or [])
            elif "projected" in vol:
                for source in vol["projected"].get("sources") or []:
                    self._project_source(folder, source)
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise ConfigError(f"volume {name}: type {kinds} is not supported on this node")
            folders[name] = folder
        for c in [*self.init_containers, *self.containers]:
            for mount in c.spec.get("volumeMounts") or []:
                found = folders.get(str(mount["name"]))
                if found is None:
                    raise ConfigError(f"volume mount {mount['name']} names no volume")
                sub = str(mount.get("subPath") or "")
                local = found / sub if sub else found
                self.mounts.add(str(mount["mountPath"]), str(local))

    def _write(self, folder: Path, rel: str, data: bytes) -> None:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def _project_data(self, folder: Path, kind: str, ref: dict[str, Any]) -> None:
        obj = self._object(kind, str(ref.get("name")))
        if obj is None:
            if ref.get("optional"):
                return
            raise ConfigError(f"{kind[:-1]} {ref.get('name')!r} not found")
        raw: dict[str, bytes] = {}
        for k, v in (obj.get("data") or {}).items():
            raw[k] = base64.b64decode(v) if kind == "secrets" else str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            raw[k] = base64.b64decode(v)
        items = ref.get("items")
        if items:
            for item in items:
                if item["key"] in raw:
                    self._write(folder, str(item["path"]), raw[item["key"]])
                elif not ref.get("optional"):
                    raise ConfigError(f"{kind[:-1]} {ref.get('name')}: no key {item['key']}")
        else:
            for k, v in raw.items():
                self._write(folder, k, v)

    def _project_fields(self, folder: Path, items: list[dict[str, Any]]) -> None:
        for item in items:
            if "fieldRef" in item:
                value = self._field(str(item["fieldRef"]["fieldPath"]))
            else:
                value = self._resource(self.containers[0], item["resourceFieldRef"])
            self._write(folder, str(item["path"]), value.encode())

    def _project_source(self, folder: Path, source: dict[str, Any]) -> None:
        if "configMap" in source:
            self._project_data(folder, "configmaps", source["configMap"])
        elif "secret" in source:
            self._project_data(folder, "secrets", source["secret"])
        elif "downwardAPI" in source:
            self._project_fields(folder, source["downwardAPI"].get("items") or [])
        elif "serviceAccountToken" in source:
            tok = source["serviceAccountToken"]
            sa = self.pod["spec"].get("serviceAccountName", "default")
            spec: dict[str, Any] = {
                "expirationSeconds": int(tok.get("expirationSeconds", 3607)),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            }
            if tok.get("audience"):
                spec["audiences"] = [tok["audience"]]
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
            code, raw = self.kube.request(
                "POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body
            )
            if code != 201:
                raise ConfigError(f"token request for {sa} failed: {code} {raw[:200]!r}")
            token = json.loads(raw)["status"]["token"]
            self._write(folder, str(tok.get("path", "token")), str(token).encode())
        else:
            raise ConfigError(f"projected source {sorted(source)} is not supported")

    # --- probes -------------------------------------------------------------------------

    def _probe(self, c: Container) -> None:
        mono = time.monotonic()
        kinds = ["startupProbe"] if not c.started else ["livenessProbe", "readinessProbe"]
        if c.started and not c.spec.get("readinessProbe"):
            c.ready = True
        for kind in kinds:
            probe = c.spec.get(kind)
            if not probe:
                continue
            due = c.probe_next.get(
                kind, c.started_mono + float(probe.get("initialDelaySeconds", 0))
            )
            if mono < due:
                continue
            c.probe_next[kind] = mono + float(probe.get("periodSeconds", 10))
            ok = self._run_probe(c, probe)
            good, bad = c.probe_runs.get(kind, (0, 0))
            good, bad = (good + 1, 0) if ok else (0, bad + 1)
            c.probe_runs[kind] = (good, bad)
            success = int(probe.get("successThreshold", 1))
            failure = int(probe.get("failureThreshold", 3))
            if kind == "startupProbe":
                if good >= success:
                    c.started = True
                elif bad >= failure:
                    self._fail_probe(c, "Startup")
            elif kind == "readinessProbe":
                if good >= success:
                    c.ready = True
                elif bad >= failure:
                    c.ready = False
            elif bad >= failure:
                self._fail_probe(c, "Liveness")

    def _fail_probe(self, c: Container, what: str) -> None:
        self.event(self.pod, "Normal", "Killing", f"container {c.name} failed {what.lower()} probe")
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._kill(c, grace)
        if self.restart_policy == "Never":
            c.done = True
        else:
            self._schedule_restart(c)

    def _port(self, c: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ConfigError(f"probe names unknown port {port!r}")

    def _run_probe(self, c: Container, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                host = get.get("host") or self.ip
                port = self._port(c, get["port"])
                path = str(get.get("path", "/"))
                conn_cls = (
                    http.client.HTTPSConnection
                    if str(get.get("scheme", "HTTP")).upper() == "HTTPS"
                    else http.client.HTTPConnection
                )
                conn = conn_cls(host, port, timeout=timeout)
                try:
                    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                    conn.request("GET", urllib.parse.quote(path, safe="/?=&%"), headers=headers)
                    status = conn.getresponse().status
                finally:
                    conn.close()
                return 200 <= status < 400
            if "tcpSocket" in probe:
                port = self._port(c, probe["tcpSocket"]["port"])
                with socket.create_connection((self.ip, port), timeout=timeout):
                    return True
            if "exec" in probe:
                argv, env, cwd = self._command(
                    Container(
                        {**c.spec, "command": probe["exec"]["command"], "args": []}, False, c.log
                    )
                )
                done = subprocess.run(
                    argv, env=env, cwd=cwd, capture_output=True, timeout=timeout, check=False
                )
                return done.returncode == 0
        except (OSError, http.client.HTTPException, subprocess.TimeoutExpired, ConfigError):
            return False
        return False

    # --- status -------------------------------------------------------------------------

    def _set_condition(self, kind: str, value: bool, reason: str = "") -> None:
        status = "True" if value else "False"
        old = self.conditions.get(kind)
        if old and old["status"] == status:
            return
        cond: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": now()}
        if reason:
            cond["reason"] = reason
        self.conditions[kind] = cond

    def _container_status(self, c: Container) -> dict[str, Any]:
        state = c.state
        overriding = self.fatal or self.blocked
        if overriding is not None and not c.running() and "terminated" not in state:
            state = {"waiting": {"reason": overriding[0], "message": overriding[1]}}
        out: dict[str, Any] = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": f"modelpilot-local://{images.repository(str(c.spec.get('image', '')))}",
            "ready": c.ready and c.running(),
            "restartCount": c.restarts,
            "started": c.running() and c.started,
            "state": state,
            "lastState": c.last_state if c.restarts else {},
        }
        if c.proc is not None:
            out["containerID"] = f"process://{c.proc.pid}"
        return out

    def status(self) -> dict[str, Any]:
        ready = bool(self.containers) and all(c.ready and c.running() for c in self.containers)
        self._set_condition("ContainersReady", ready, "" if ready else "ContainersNotReady")
        self._set_condition("Ready", ready, "" if ready else "ContainersNotReady")
        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            **({"podIP": self.ip, "podIPs": [{"ip": self.ip}]} if self.ip else {}),
            "startTime": self.start_time,
            "qosClass": self.pod.get("status", {}).get("qosClass", "BestEffort"),
            "conditions": list(self.conditions.values()),
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [
                self._container_status(c) for c in self.init_containers
            ]
        if self.fatal is not None:
            status["reason"], status["message"] = self.fatal
        return status

    def _sync_status(self) -> None:
        status = self.status()
        if status == self.last_status:
            return
        path = f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status"
        body = {"metadata": {"uid": self.uid}, "status": status}
        code, _ = self.kube.request(
            "PATCH", path, body, content_type="application/strategic-merge-patch+json"
        )
        if code == 200:
            self.last_status = status
        elif code == 404:
            self.stop_event.set()

    def _delete_object(self) -> None:
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
        self.kube.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}", body)

    def cleanup(self) -> None:
        """Remove the pod's folder but keep its logs, which outlive the pod for debugging."""
        for sub in ("volumes", "tmp", "home"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
