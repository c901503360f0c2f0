"""Inference traffic for the end-to-end tests and the demo, recorded request by request.

Two drivers, one per router:

* :class:`GatewayDriver` (router ``gatewayApi``): a client of the local cluster's Gateway.
  Traefik, the Gateway API implementation ``e2e.cluster up`` runs, enforces the HTTPRoute
  the operator wrote (weights, header and cookie matches); the driver only sends requests
  to the Gateway and records which version answered, as the runtime names it in its v2
  response. The split is observed, never computed: :func:`shares_per_step` measures it.
* :class:`MeshDriver` (router ``istio``): a stand-in for the mesh's data plane, as there is
  no Envoy for this machine. It reads back the VirtualService the operator wrote, and for
  each request picks a version by the route's weights (A/B matches: requests that carry
  the matching header go to the match version; mirror: a copy goes to the mirror version
  and its answer is dropped), then sends it straight to a Ready pod of that version. The
  weights it obeys are the ones read back from the API server, never the ones the operator
  intended; it proves the route's content, not a proxy's enforcement of it.

Both record what they sent and the route weights they read over time, so a test or the
demo can plot it.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from modelpilot_operator.api.v1alpha1 import ModelDeployment, TrafficMatch
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
    return match_headers(traffic.match)


def match_headers(matches: Sequence[TrafficMatch]) -> dict[str, str]:
    """Headers that satisfy the first of ``matches`` (empty if there is none)."""
    if not matches:
        return {}
    m = matches[0]
    value = m.exact if m.exact is not None else (m.prefix or "") + "x"
    if m.regex is not None:
        value = m.regex.strip("^$")
    if m.header is not None:
        return {m.header: value}
    return {"cookie": f"{m.cookie}={value}"}


class _Driver:
    """What both drivers share: the route read back every second, requests sent at a
    steady rate from a pool (on time even when a version answers late, as from many
    clients), and the recording."""

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
        self._spec_match: tuple[TrafficMatch, ...] = ()
        self._rng_lock = threading.Lock()

    def _read_route(self) -> dict[str, Any] | None:
        """Read the ModelDeployment and its live route; record the route's weights."""
        raw = self.api.get(MODEL_DEPLOYMENT, self.namespace, self.name)
        if raw is None:
            self._traffic = None
            return None
        md = ModelDeployment.model_validate(
            {k: raw[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in raw}
        )
        traffic = read_traffic(self.api, md)
        if traffic is None:
            # Router none (blue-green by Service selector): all to the stable version.
            status = raw.get("status") or {}
            traffic = Traffic(weights={status.get("stable") or md.spec.stable: 100})
        self._traffic = traffic
        self._spec_match = tuple(md.spec.rollout.match) if md.spec.rollout else ()
        with self.recording.lock:
            self.recording.weights.append((time.time(), dict(traffic.weights)))
        return raw

    def refresh(self) -> None:
        self._read_route()

    def send_one(self) -> None:
        raise NotImplementedError

    def _route_loop(self) -> None:
        while not self._stop.is_set():
            # The API server restarting must not stop the traffic.
            with contextlib.suppress(Exception):
                self.refresh()
            self._stop.wait(1.0)

    def _send_loop(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        with ThreadPoolExecutor(max_workers=32, thread_name_prefix="traffic-send") as pool:
            while not self._stop.is_set():
                pool.submit(self.send_one)
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()

    def _start(self) -> None:
        self.refresh()
        for target in (self._route_loop, self._send_loop):
            t = threading.Thread(target=target, daemon=True, name=f"traffic-{target.__name__}")
            t.start()
            self._threads.append(t)

    def stop(self) -> Recording:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._client.close()
        return self.recording

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MeshDriver(_Driver):
    """The mesh stand-in: sends ``rate`` requests per second to a ModelDeployment, split by
    its live route, straight to the pods of the version it picked."""

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
        super().__init__(api, namespace, name, rate=rate, body=body, seed=seed, timeout=timeout)
        self._endpoints: dict[str, list[str]] = {}
        self._rr = 0

    # -- what the mesh knows ---------------------------------------------------------
    def refresh(self) -> None:
        """Read the route back and the Ready pod IPs of every version."""
        if self._read_route() is None:
            return
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
        headers = match_headers(self._spec_match or traffic.match) if matched else {}
        self._send(version, body, headers, False, matched)
        if mirror and traffic.mirror_version:
            self._send(traffic.mirror_version, body, headers, True, matched)

    def start(self) -> MeshDriver:
        self._start()
        return self

    def __enter__(self) -> MeshDriver:
        return self.start()


class GatewayDriver(_Driver):
    """A client of the cluster's Gateway: ``rate`` requests per second to a ModelDeployment's
    host through Traefik, each recorded with the version that answered it.

    Traefik alone decides where a request goes. When the route has an A/B rule, a share
    (``match_share``) of the synthetic users carry the rule's header or cookie, as users of
    the tested group would; the driver reads the match from the ModelDeployment's spec and
    never picks a version. The route's weights it reads back are only recorded, as the
    intended split to measure the observed one against.
    """

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        *,
        url: str,
        host: str,
        rate: float = 20.0,
        body: Callable[[random.Random], dict[str, Any]] | None = None,
        seed: int = 0,
        timeout: float = 5.0,
        match_share: float = MATCHING_SHARE,
    ) -> None:
        super().__init__(api, namespace, name, rate=rate, body=body, seed=seed, timeout=timeout)
        self.url = url.rstrip("/")
        self.host = host
        self.match_share = match_share

    def send_one(self) -> None:
        traffic = self._traffic
        with self._rng_lock:
            matched = bool(traffic and traffic.match_version and self._spec_match) and (
                self.rng.random() < self.match_share
            )
            body = self.body(self.rng)
        headers = {"host": self.host}
        if matched:
            headers.update(match_headers(self._spec_match))
        started = time.time()
        try:
            resp = self._client.post(
                f"{self.url}/v2/models/{self.name}/infer", json=body, headers=headers
            )
            code, version = resp.status_code, answered_by(resp.content)
        except httpx.HTTPError:
            code, version = 599, ""
        self.recording.add(Sent(started, version, code, time.time() - started, False, matched))

    def start(self) -> GatewayDriver:
        self._start()
        return self

    def __enter__(self) -> GatewayDriver:
        return self.start()


def answered_by(body: bytes) -> str:
    """The version a runtime's v2 answer (or failure) names; "" when it names none (an
    answer of the gateway itself, such as 503 for a backend without Ready endpoints)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    version = doc.get("model_version") if isinstance(doc, dict) else None
    return version if isinstance(version, str) else ""


# --- measuring the split ------------------------------------------------------------------

# Standard deviations of the binomial band: a true split falls outside it for one version
# of one step about once in 16,000.
SPLIT_Z = 4.0
# After the route's weights change, how long the data plane may take to apply them (the
# route read back once a second, Traefik's provider throttle of 0.5 s, its informers):
# requests sent then are left out of either step's share.
SPLIT_GUARD = 2.0


def binomial_tolerance(p: float, n: int, z: float = SPLIT_Z) -> float:
    """Half-width of the band that the observed share of ``n`` requests, each sent to a
    version with probability ``p``, stays within: ``z`` standard deviations plus half a
    request of continuity correction (so that a share of 0 or 1 must be met exactly)."""
    if n <= 0:
        return 1.0
    return z * math.sqrt(p * (1.0 - p) / n) + 0.5 / n


@dataclass(frozen=True)
class StepShare:
    """The requests answered while the route carried one set of weights."""

    weights: dict[str, int]
    start: float
    end: float
    counts: dict[str, int]
    unattributed: int = 0

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def share(self, version: str) -> float:
        return self.counts.get(version, 0) / self.n if self.n else 0.0

    def intended(self, version: str) -> float:
        return self.weights.get(version, 0) / 100.0

    def tolerance(self, version: str, z: float = SPLIT_Z) -> float:
        return binomial_tolerance(self.intended(version), self.n, z)

    def within(self, z: float = SPLIT_Z) -> bool:
        """Every version's observed share is within the binomial band of its weight (a
        version the route does not name, or names at 0, answered nothing)."""
        versions = set(self.weights) | set(self.counts)
        return all(abs(self.share(v) - self.intended(v)) <= self.tolerance(v, z) for v in versions)

    def describe(self, z: float = SPLIT_Z) -> str:
        parts = [
            f"{v} {100 * self.share(v):.1f}% (weight {self.weights.get(v, 0)}%, "
            f"\u00b1{100 * self.tolerance(v, z):.1f})"
            for v in sorted(set(self.weights) | set(self.counts))
        ]
        extra = f", {self.unattributed} unattributed" if self.unattributed else ""
        return f"n={self.n}: " + ", ".join(parts) + extra


def weight_segments(
    weights: Sequence[tuple[float, dict[str, int]]],
) -> list[tuple[dict[str, int], float, float]]:
    """Runs of equal weights read back from the route: (weights, first read, last read)."""
    segments: list[tuple[dict[str, int], float, float]] = []
    for at, w in weights:
        if segments and segments[-1][0] == w:
            segments[-1] = (w, segments[-1][1], at)
        else:
            segments.append((dict(w), at, at))
    return segments


def shares_per_step(
    requests: Iterable[Sent],
    weights: Sequence[tuple[float, dict[str, int]]],
    guard: float = SPLIT_GUARD,
) -> list[StepShare]:
    """The observed split per run of route weights.

    A run's window opens ``guard`` seconds after the first read of its weights (the data
    plane applies a change a little after the route shows it) and closes at its last read
    (the route still carried them then, so the data plane did too). Only weighted traffic
    counts: requests that matched an A/B rule, mirrored copies and requests the driver
    could not send are left out; answers that name no version are counted apart.
    """
    sent = [s for s in requests if not s.matched and not s.mirrored and s.code != 599]
    out = []
    for w, first, last in weight_segments(weights):
        start, end = first + guard, last
        window = [s for s in sent if start <= s.at <= end]
        counts: dict[str, int] = {}
        for s in window:
            if s.version:
                counts[s.version] = counts.get(s.version, 0) + 1
        unattributed = sum(1 for s in window if not s.version)
        out.append(StepShare(w, start, end, counts, unattributed))
    return out
