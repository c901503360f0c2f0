"""Fixtures of the rollout end-to-end tests: the operator as a real process, Prometheus,
two sample classifiers, and a :class:`Rollout` helper per test.

With router ``istio`` (the default here) the traffic comes from
:class:`e2e.traffic.MeshDriver`, which stands in for the mesh's data plane (there is no
Envoy for this machine): it splits requests by the weights it reads back from the
VirtualService the operator wrote, and mirrors a copy to the candidate when the route says
so. With router ``gatewayApi`` (:func:`e2e.cluster.gateway_routing`) it comes from
:class:`e2e.traffic.GatewayDriver`: requests go through the cluster's Gateway, and Traefik
enforces the HTTPRoute.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import GATEWAY_URL, PROMETHEUS_PORT, gateway_host
from e2e.demo import version_spec, write_models
from e2e.kube import LocalCluster, wait_for
from e2e.operator_process import OperatorProcess
from e2e.traffic import GatewayDriver, MeshDriver
from modelpilot_operator.k8s.client import ApiServer
from modelpilot_operator.k8s.kinds import MODEL_DEPLOYMENT

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS_URL = f"http://127.0.0.1:{PROMETHEUS_PORT}"
NAME = "fraud"
# Generous: only keeps a broken cluster from hanging the run, never a claim on speed.
ROLLOUT_TIMEOUT = 480.0


@pytest.fixture(scope="session")
def prometheus(local_cluster: LocalCluster) -> str:
    local_cluster.cluster.start_prometheus()
    return PROMETHEUS_URL


@pytest.fixture(scope="session")
def gateway(local_cluster: LocalCluster) -> str:
    """The Gateway Traefik programs (``up`` starts it); its URL. Skips without Traefik."""
    if not local_cluster.cluster.start_gateway():
        pytest.skip("Traefik is not built: no Gateway API data plane (make cluster-build)")
    return GATEWAY_URL


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two classifiers, v1 and v2, trained apart: same inputs, different predictions."""
    return write_models(tmp_path_factory.mktemp("rollout-models"))


@pytest.fixture
def operator(
    local_cluster: LocalCluster,
    namespace: str,
    crd_installed: None,
    prometheus: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    settings = {"MODELPILOT_PROMETHEUS_URL": prometheus, "MODELPILOT_PROMETHEUS_TIMEOUT": "5s"}
    op = OperatorProcess(namespace, local_cluster.kubeconfig, tmp_path / "operator.log", settings)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def version(name: str, model_dir: Path, *, faults: dict[str, str] | None = None) -> dict[str, Any]:
    """One version of the ModelDeployment: a sample classifier on one small CPU pod."""
    v = version_spec(name, model_dir, faults)
    v["runtime"]["warmup"] = {"enabled": False}
    v["resources"] = {"cpu": "100m", "memory": "256Mi"}
    return v


def analysis(
    *checks: dict[str, Any],
    interval: str = "5s",
    failure_limit: int = 1,
    min_samples: int = 20,
    inconclusive_deadline: str = "3m",
) -> dict[str, Any]:
    return {
        "interval": interval,
        "minSamples": min_samples,
        "failureLimit": failure_limit,
        "inconclusiveDeadline": inconclusive_deadline,
        "checks": list(checks),
    }


@dataclass
class Rollout:
    """One ModelDeployment under test, its namespace, and the mesh stand-in's traffic."""

    cluster: LocalCluster
    namespace: str
    api: ApiServer
    name: str = NAME
    driver: MeshDriver | GatewayDriver | None = None
    applied: list[dict[str, Any]] = field(default_factory=list)
    routing: dict[str, Any] = field(default_factory=lambda: {"router": "istio"})

    @property
    def through_gateway(self) -> bool:
        return self.routing.get("router") == "gatewayApi"

    def apply(self, spec: dict[str, Any]) -> None:
        obj = {
            "apiVersion": "modelpilot.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"routing": self.routing, **spec},
        }
        self.applied.append(obj)
        self.cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(obj)
        )

    def obj(self) -> dict[str, Any]:
        return self.api.get(MODEL_DEPLOYMENT, self.namespace, self.name) or {}

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.obj().get("status") or {}
        return status

    def condition(self, ctype: str) -> dict[str, Any]:
        for c in self.status().get("conditions") or []:
            if c.get("type") == ctype:
                return dict(c)
        return {}

    def wait_phase(self, *phases: str, timeout: float = ROLLOUT_TIMEOUT) -> dict[str, Any]:
        """Wait until the phase is one of ``phases``; returns the status then."""

        def probe() -> dict[str, Any] | None:
            st = self.status()
            return st if st.get("phase") in phases else None

        return wait_for(f"{self.name} to reach {'/'.join(phases)}", probe, timeout, interval=1)

    def wait(self, what: str, probe: Any, timeout: float = ROLLOUT_TIMEOUT) -> dict[str, Any]:
        """Wait until ``probe(status)`` holds; returns the status then."""

        def check() -> dict[str, Any] | None:
            st = self.status()
            return st if probe(st) else None

        return wait_for(what, check, timeout, interval=1)

    def wait_versions_ready(self, *names: str, timeout: float = 300) -> None:
        def ready() -> bool:
            have = {v["name"]: v.get("ready") for v in self.status().get("versions") or []}
            return all(have.get(n) for n in names)

        wait_for(f"versions {', '.join(names)} of {self.name} to be ready", ready, timeout, 1)

    def start_traffic(
        self, rate: float = 20.0, body: Callable[[random.Random], dict[str, Any]] | None = None
    ) -> MeshDriver | GatewayDriver:
        """Through the Gateway with router gatewayApi; otherwise the mesh stand-in, which
        splits requests by the weights read back from the route."""
        driver: MeshDriver | GatewayDriver
        if self.through_gateway:
            driver = GatewayDriver(
                self.api,
                self.namespace,
                self.name,
                url=GATEWAY_URL,
                host=gateway_host(self.name, self.namespace),
                rate=rate,
                body=body,
            )
        else:
            driver = MeshDriver(self.api, self.namespace, self.name, rate=rate, body=body)
        self.driver = driver.start()
        return driver

    def events(self) -> list[dict[str, Any]]:
        events = self.cluster.get(
            "events",
            "-n",
            self.namespace,
            "--field-selector",
            f"involvedObject.kind=ModelDeployment,involvedObject.name={self.name}",
        )
        return list((events or {}).get("items", []))

    def explain(self, op: OperatorProcess | None = None) -> str:
        """What to read when a scenario fails: status, events, the operator's log tail."""
        st = self.status()
        records = [
            f"  {r.get('at')} step={r.get('step')} {r.get('verdict')}: "
            + "; ".join(f"{c['name']}={c['verdict']} ({c.get('message', '')})" for c in r["checks"])
            for r in st.get("analysis") or []
        ]
        events = [f"  {e.get('reason')}: {e.get('message')}" for e in self.events()]
        tail = "\n".join(op.logs().splitlines()[-40:]) if op else ""
        return (
            f"phase={st.get('phase')} message={st.get('message')}\n"
            f"weights={st.get('weights')} desired={st.get('desiredWeights')}\n"
            "analysis:\n" + "\n".join(records) + "\nevents:\n" + "\n".join(events) + "\n"
            "operator log:\n" + tail
        )


@pytest.fixture
def rollout(
    local_cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> Iterator[Rollout]:
    ro = Rollout(local_cluster, namespace, ApiServer.from_environment())
    try:
        yield ro
    finally:
        if ro.driver is not None:
            ro.driver.stop()
        # No finalizer: the ModelDeployment goes whether the operator runs or not.
        local_cluster.kubectl(
            "delete", "modeldeployment", ro.name, "-n", namespace, "--ignore-not-found",
            "--timeout=60s",
        )  # fmt: skip
