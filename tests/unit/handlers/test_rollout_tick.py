"""The rollout handler's tick against an in-memory API server and a stand-in Prometheus."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from modelpilot_operator.handlers.rollout import rollout_tick
from modelpilot_operator.k8s.kinds import Kind, kind_of
from modelpilot_operator.rollout import Event
from tests.fakeprom import FakePrometheus, VersionData
from tests.unit.rollout.harness import T0, make_spec


class MemoryApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.status_writes: list[dict[str, Any]] = []
        self.status_managers: list[str] = []

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind.kind, namespace, name))

    def apply(self, obj: dict[str, Any], *, manager: str = "", force: bool = True) -> Any:
        meta = obj["metadata"]
        self.objects[(kind_of(obj).kind, meta.get("namespace"), meta["name"])] = obj
        return obj

    def apply_status(self, obj: dict[str, Any], *, manager: str = "", force: bool = True) -> Any:
        self.status_writes.append(obj)
        self.status_managers.append(manager)
        return obj

    def list(self, kind: Kind, namespace: str | None, label_selector: str = "") -> Any:
        return [o for (k, ns, _), o in self.objects.items() if k == kind.kind and ns == namespace]

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        return self.objects.pop((kind.kind, namespace, name), None) is not None

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.apply(obj)  # type: ignore[no-any-return]

    def served_kinds(self, api_version: str) -> set[str]:
        return set()


def test_ticks_walk_a_canary_to_promotion_through_the_route() -> None:
    spec = make_spec(
        steps=[{"weight": 20}],
        analysis={"minSamples": 10, "checks": [{"name": "errors", "builtin": "errorRate"}]},
    )
    body: dict[str, Any] = {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml", "generation": 1, "uid": "u1"},
        "spec": spec.to_wire(),
        "status": {"versions": [{"name": "v1", "ready": True}, {"name": "v2", "ready": True}]},
    }
    api = MemoryApi()
    fake = FakePrometheus(lambda v, at, s: VersionData(codes={"200": 1000.0}))
    events: list[Event] = []
    now = T0
    for _ in range(40):
        d = rollout_tick(api, body, fake.source(), now, events.append)
        body["status"] = {**body["status"], **api.status_writes[-1]["status"]}
        now += timedelta(seconds=10)
        if d.status.phase == "Promoted":
            break
    assert d.status.phase == "Promoted"
    assert {k: v for k, v in body["status"]["weights"].items() if v} == {"v2": 100}
    reasons = [e.reason for e in events]
    assert "StepStarted" in reasons
    assert "AnalysisPassed" in reasons
    assert any("modelpilot_inference_requests_total" in q for q in fake.queries)


def test_the_rollout_writes_status_under_a_field_manager_of_its_own() -> None:
    """Server-side apply drops what a manager applied before and omits now: under the
    reconciler's manager, each writer would erase the other's half of status."""
    from modelpilot_operator.k8s.client import STATUS_FIELD_MANAGER
    from modelpilot_operator.k8s.status import CLI_FIELD_MANAGER

    body: dict[str, Any] = {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml", "generation": 1, "uid": "u1"},
        "spec": make_spec(steps=[{"weight": 20}]).to_wire(),
        "status": {"versions": [{"name": "v1", "ready": True}, {"name": "v2", "ready": True}]},
    }
    api = MemoryApi()
    fake = FakePrometheus(lambda v, at, s: VersionData(codes={"200": 1000.0}))
    rollout_tick(api, body, fake.source(), T0, lambda e: None)
    assert api.status_managers
    assert all(
        m and m not in (STATUS_FIELD_MANAGER, CLI_FIELD_MANAGER) for m in api.status_managers
    )
    written = api.status_writes[-1]["status"]
    assert "versions" not in written, "the reconciler owns versions"


def test_a_steady_tick_writes_nothing() -> None:
    """The engine writes its part of status only when something changed: a steady
    ModelDeployment costs its timer reads, no writes."""
    spec = make_spec(candidate=None)
    body: dict[str, Any] = {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml", "generation": 1, "uid": "u1"},
        "spec": spec.to_wire(),
        "status": {
            "observedGeneration": 1,
            "versions": [{"name": "v1", "ready": True}],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "AllVersionsReady", "message": ""}
            ],
        },
    }
    api = MemoryApi()
    fake = FakePrometheus(lambda v, at, s: VersionData())
    now = T0

    def tick() -> None:
        nonlocal now
        before = len(api.status_writes)
        rollout_tick(api, body, fake.source(), now, lambda e: None)
        now += timedelta(seconds=5)
        if len(api.status_writes) > before:  # what the API server would now store
            written = api.status_writes[-1]["status"]
            ready = [c for c in body["status"].get("conditions", []) if c["type"] == "Ready"]
            body["status"] = {**body["status"], **written}
            body["status"]["conditions"] = [*ready, *written.get("conditions", [])]

    tick()
    assert api.status_managers == ["modelpilot-rollout"]
    first = api.status_writes[0]["status"]
    assert "versions" not in first
    assert all(c["type"] in ("Promoted", "RolledBack") for c in first.get("conditions", []))
    tick()  # the weights read back from the route the first tick applied
    settled = (len(api.status_writes), dict(api.objects))
    for _ in range(3):
        tick()
    assert (len(api.status_writes), dict(api.objects)) == settled


def test_the_timer_runs_only_while_the_engine_has_work() -> None:
    from modelpilot_operator.handlers.rollout import rollout_has_work

    settled = {
        "phase": "Stable",
        "stable": "v1",
        "desiredWeights": {"v1": 100},
        "mirrorPercent": 0,
    }
    spec = {"stable": "v1", "versions": []}
    assert not rollout_has_work(spec, settled)  # type: ignore[arg-type]
    assert rollout_has_work(spec, {})  # type: ignore[arg-type]
    assert rollout_has_work({**spec, "rollout": {"candidate": "v2"}}, settled)  # type: ignore[arg-type]
    assert rollout_has_work({**spec, "stable": "v2"}, settled)  # type: ignore[arg-type]
    assert rollout_has_work(spec, {**settled, "phase": "Promoted"})  # type: ignore[arg-type]
    asked = {**settled, "request": {"id": "r1", "action": "rollback"}}
    assert rollout_has_work(spec, asked)  # type: ignore[arg-type]
    assert not rollout_has_work(spec, {**asked, "handledRequest": "r1"})  # type: ignore[arg-type]
