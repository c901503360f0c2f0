"""A stand-in for the mesh's data plane: sends inference traffic split as the route says.

The local cluster has no Istio or Gateway data plane, so this driver does its job for the
end-to-end tests and the demo: it reads back the route the operator wrote (VirtualService
or HTTPRoute), and for each request picks a version by the route's weights (A/B matches:
requests that carry the matching header go to the match version; mirror: a copy goes to
the mirror version and its answer is dropped), then sends it straight to a Ready pod of
that version. Everything it sent is recorded, so a test or the demo can plot it.

It is a stand-in and says so; the weights it obeys are the ones read back from the API
server, never the ones the operator intended.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from modelpilot_operator.api.v1alpha1 import ModelDeployment
from modelpilot_operator.builders import Traffic
from modelpilot_operator.k8s.client import KubeApi
from modelpilot_operator.k8s.kinds import MODEL_DEPLOYMENT, POD
from modelpilot_operator.k8s.routes import read_traffic

RUNTIME_PORT = 8080
# Share of synthetic users that carry the A/B match header (when the route has one).
MATCHING_SHARE = 0.3


@dataclass(frozen=True)
class Sent:
    """One request as the driver saw it."""

    at: float
    version: str
    code: int
    latency: float
    mirrored: bool = False
    matched: bool = False


@dataclass
class Recording:
    """What the driver sent, and the route weights it read over time."""

    requests: list[Sent] = field(default_factory=list)
    weights: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sent: Sent) -> None:
        with self.lock:
            self.requests.append(sent)

    def snapshot(self) -> tuple[list[Sent], list[tuple[float, dict[str, int]]]]:
        with self.lock:
            return list(self.requests), list(self.weights)


def infer_body(inputs: list[float], input_name: str = "input") -> dict[str, Any]:
    """An Open Inference Protocol v2 request with one FP32 row."""
    return {
        "inputs": [
            {"name": input_name, "shape": [1, len(inputs)], "datatype": "FP32", "data": inputs}
        ]
    }


def _match_headers(traffic: Traffic) -> dict[str, str]:
    """Headers that satisfy the route's first A/B match (empty if it has none)."""
    if not traffic.match:
        return {}
    m = traffic.match[0]
    value = m.exact if m.exact is not None else (m.prefix or "") + "x"
    if m.regex is not None:
        value = m.regex.strip("^$")
    if m.header is not None:
        return {m.header: value}
    return {"cookie": f"{m.cookie}={value}"}


class MeshDriver:
    """Sends ``rate`` requests per second to a ModelDeployment, split by its live route."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        *,
        rate: float = 20.0,
        body: Callable[[random.Random], dict[str, Any]] | None = None,
        seed: int = 0,
        timeout: float = 5.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.rate = rate
        self.body = body or (lambda rng: infer_body([rng.random() for _ in range(8)]))
        self.rng = random.Random(seed)
        self.recording = Recording()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client = httpx.Client(timeout=timeout)
        self._traffic: Traffic | None = None
        self._endpoints: dict[str, list[str]] = {}
        self._rr = 0
        self._rng_lock = threading.Lock()

    # -- what the mesh knows ---------------------------------------------------------
    def refresh(self) -> None:
        """Read the route back and the Ready pod IPs of every version."""
        raw = self.api.get(MODEL_DEPLOYMENT, self.namespace, self.name)
        if raw is None:
            self._traffic = None
            return
        md = ModelDeployment.model_validate(
            {k: raw[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in raw}
        )
        traffic = read_traffic(self.api, md)
        if traffic is None:
            # Router none (blue-green by Service selector): all to the stable version.
            status = raw.get("status") or {}
            traffic = Traffic(weights={status.get("stable") or md.spec.stable: 100})
        self._traffic = traffic
        with self.recording.lock:
            self.recording.weights.append((time.time(), dict(traffic.weights)))
        endpoints: dict[str, list[str]] = {}
        for pod in self.api.list(POD, self.namespace, f"modelpilot.io/model={self.name}"):
            version = pod["metadata"].get("labels", {}).get("modelpilot.io/version")
            ip = pod.get("status", {}).get("podIP")
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in pod.get("status", {}).get("conditions", [])
            )
            if version and ip and ready and not pod["metadata"].get("deletionTimestamp"):
                endpoints.setdefault(version, []).append(ip)
        self._endpoints = endpoints

    def _pick(self, traffic: Traffic) -> tuple[str, bool]:
        if traffic.match_version and self.rng.random() < MATCHING_SHARE:
            return traffic.match_version, True
        versions = list(traffic.weights)
        return self.rng.choices(versions, weights=[traffic.weights[v] for v in versions])[0], False

    def _send(
        self,
        version: str,
        body: dict[str, Any],
        headers: dict[str, str],
        mirrored: bool,
        matched: bool,
    ) -> None:
        ips = self._endpoints.get(version)
        started = time.time()
        if not ips:
            # No Ready endpoint: the mesh answers 503 itself.
            self.recording.add(Sent(started, version, 503, 0.0, mirrored, matched))
            return
        self._rr += 1
        ip = ips[self._rr % len(ips)]
        url = f"http://{ip}:{RUNTIME_PORT}/v2/models/{self.name}/infer"
        try:
            resp = self._client.post(url, json=body, headers=headers)
            code = resp.status_code
        except httpx.HTTPError:
            code = 599
        self.recording.add(Sent(started, version, code, time.time() - started, mirrored, matched))

    def send_one(self) -> None:
        """Route and send one request (and its mirror copy, if the route mirrors)."""
        traffic = self._traffic
        if traffic is None:
            return
        with self._rng_lock:
            version, matched = self._pick(traffic)
            mirror = (
                bool(traffic.mirror_version) and self.rng.random() * 100 < traffic.mirror_percent
            )
            body = self.body(self.rng)
        headers = _match_headers(traffic) if matched else {}
        self._send(version, body, headers, False, matched)
        if mirror and traffic.mirror_version:
            self._send(traffic.mirror_version, body, headers, True, matched)

    # -- running -------------------------------------------------------------------
    def _route_loop(self) -> None:
        while not self._stop.is_set():
            # The API server restarting must not stop the traffic.
            with contextlib.suppress(Exception):
                self.refresh()
            self._stop.wait(1.0)

    def _send_loop(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        # Requests go out on time even when a slow version answers late, as from many clients.
        with ThreadPoolExecutor(max_workers=32, thread_name_prefix="mesh-send") as pool:
            while not self._stop.is_set():
                pool.submit(self.send_one)
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()

    def start(self) -> MeshDriver:
        self.refresh()
        for target in (self._route_loop, self._send_loop):
            t = threading.Thread(target=target, daemon=True, name=f"mesh-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> Recording:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._client.close()
        return self.recording

    def __enter__(self) -> MeshDriver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
