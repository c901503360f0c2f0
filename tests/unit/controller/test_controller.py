"""One reconcile pass of the controller: the rollout decides and writes status, the
reconciler alone writes children and routes, conflicts and leadership are respected."""

from __future__ import annotations

from typing import Any

import pytest

from modelpilot_operator.controller.rollout import ENGINE_KEYS, has_work
from modelpilot_operator.k8s.client import (
    FIELD_MANAGER,
    ROLLOUT_FIELD_MANAGER,
    STATUS_FIELD_MANAGER,
    ConflictError,
    NotLeaderError,
)
from modelpilot_operator.k8s.kinds import MODEL_DEPLOYMENT, SERVICE, VIRTUAL_SERVICE
from tests.fakeprom import FakePrometheus, VersionData
from tests.unit.rollout.harness import make_spec

from .harness import KEY, Cluster, model_deployment


def canary(**rollout: Any) -> dict[str, Any]:
    return model_deployment(make_spec(**rollout).to_wire())


ERRORS_ONLY = {"minSamples": 10, "checks": [{"name": "errors", "builtin": "errorRate"}]}


def healthy() -> FakePrometheus:
    return FakePrometheus(lambda v, at, s: VersionData(codes={"200": 1000.0}))


def test_passes_walk_a_canary_to_promotion_through_the_route() -> None:
    prom = healthy()
    cluster = Cluster(canary(steps=[{"weight": 20}], analysis=ERRORS_ONLY), prom)
    for _ in range(60):
        cluster.step(seconds=10)
        if cluster.status().get("phase") == "Promoted":
            break
    status = cluster.status()
    assert status["phase"] == "Promoted"
    assert {k: v for k, v in status["weights"].items() if v} == {"v2": 100}
    assert {"StepStarted", "AnalysisPassed", "Promoted"} <= set(cluster.events())
    assert any("modelpilot_inference_requests_total" in q for q in prom.queries)


def test_the_route_has_one_writer_and_status_two() -> None:
    """Children and routes belong to the reconciler's field manager alone; status is
    split between the reconciler's manager and the rollout engine's."""
    cluster = Cluster(canary(steps=[{"weight": 20}, {"weight": 50}]), healthy())
    for _ in range(12):
        cluster.step(seconds=10)
    assert cluster.status()["desiredWeights"] != {"v1": 100}
    for entry in cluster.api.managed_fields(VIRTUAL_SERVICE, "ml", "fraud"):
        if entry["operation"] == "Apply":
            assert entry["manager"] == FIELD_MANAGER
    status_managers = {
        e["manager"]
        for e in cluster.api.managed_fields(MODEL_DEPLOYMENT, *KEY)
        if e["subresource"] == "status"
    }
    assert status_managers == {STATUS_FIELD_MANAGER, ROLLOUT_FIELD_MANAGER}
    owners = cluster.api.owners(MODEL_DEPLOYMENT, *KEY, ".status.versions")
    assert owners == {STATUS_FIELD_MANAGER}, "the reconciler owns versions"
    assert cluster.api.owners(MODEL_DEPLOYMENT, *KEY, ".status.desiredWeights.v2") == {
        ROLLOUT_FIELD_MANAGER
    }


def test_the_route_carries_the_weights_the_engine_just_decided() -> None:
    """The engine writes desiredWeights and the reconciler renders them in the same pass:
    the route never lags a pass behind status (nor goes back to an older step)."""
    steps = [{"weight": 20}, {"weight": 50}, {"weight": 80}]
    cluster = Cluster(canary(steps=steps, analysis=ERRORS_ONLY), healthy())
    seen: list[int] = []
    for _ in range(40):
        cluster.step(seconds=10)
        vs = cluster.api.get(VIRTUAL_SERVICE, "ml", "fraud")
        assert vs is not None
        desired = cluster.status().get("desiredWeights", {})
        routed = {
            d["destination"]["subset"]: d.get("weight", 0) for d in vs["spec"]["http"][-1]["route"]
        }
        assert {k: v for k, v in routed.items() if v} == {k: v for k, v in desired.items() if v}
        seen.append(routed.get("v2", 0))
        if cluster.status().get("phase") == "Promoted":
            break
    assert seen == sorted(seen), f"the candidate's weight went back: {seen}"
    assert cluster.status()["phase"] == "Promoted"


def test_a_steady_pass_writes_nothing() -> None:
    cluster = Cluster(model_deployment(make_spec(candidate=None).to_wire()))
    for _ in range(3):
        cluster.step()
    settled = cluster.writes()
    for _ in range(5):
        assert cluster.step() is None, "nothing to come back for before the resync"
    assert cluster.writes() == settled
    assert cluster.status()["phase"] == "Stable"


def test_a_decision_on_an_outdated_object_is_refused_and_taken_again() -> None:
    """The engine's status write carries the resourceVersion it decided on: if the object
    changed meanwhile, the write is refused (409) and nothing else happens in that pass."""
    cluster = Cluster(canary(steps=[{"weight": 20}]), healthy())
    cluster.step()
    cluster.catch_up()
    stale = cluster.controller.mds.get(*KEY)
    assert stale is not None
    # Someone (a person, another writer) changes the object after the cache saw it.
    cluster.api.edit(MODEL_DEPLOYMENT, "ml", "fraud", metadata__labels={"team": "fraud"})
    writes = cluster.writes(SERVICE)
    with pytest.raises(ConflictError):
        cluster.controller.sync(KEY)
    assert cluster.writes(SERVICE) == writes
    cluster.step()  # the next pass sees the newer object and goes on
    assert cluster.status().get("candidate") == "v2"


def test_the_worker_backs_off_after_a_conflict() -> None:
    cluster = Cluster(canary(steps=[{"weight": 20}]), healthy())
    cluster.step()
    cluster.catch_up()
    cluster.api.edit(MODEL_DEPLOYMENT, "ml", "fraud", metadata__labels={"team": "fraud"})
    queue = cluster.controller.queue
    while queue.get(0) is not None:  # what the caches' events queued
        pass
    cluster.controller.process(KEY)
    assert queue.failures(KEY) == 1
    assert queue.pending() == 1, "back after its back-off"
    assert queue.get(0) is None, "not at once"


def test_a_follower_writes_nothing() -> None:
    cluster = Cluster(canary(steps=[{"weight": 20}]), healthy(), leading=False)
    cluster.catch_up()
    cluster.controller.queue.add(KEY)
    key = cluster.controller.queue.get(0)
    assert key == KEY
    # The worker asks before it reconciles; a write that slips through is refused by the
    # API client (see test_client); here: nothing happened.
    if cluster.controller.leading():
        cluster.controller.process(key)
    cluster.controller.queue.done(key)
    assert cluster.writes() == 0


def test_an_invalid_spec_keeps_what_the_reconciler_reported() -> None:
    """Reported under the reconciler's field manager: the fields it wrote before must go
    along, or server-side apply removes them (versions, and the scale selector)."""
    cluster = Cluster(model_deployment(make_spec(candidate=None).to_wire()))
    for _ in range(3):
        cluster.step()
    before = cluster.status()
    assert before["selector"]
    assert before["versions"]
    body = cluster.body()
    body["spec"]["rollout"] = {
        "candidate": "v2",
        "analysis": {"checks": [{"name": "custom", "query": "sum(rate(x[1m]", "min": 1}]},
    }
    cluster.api.put(body)
    cluster.step()
    after = cluster.status()
    degraded = {c["type"]: c for c in after["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    for key in ("versions", "selector", "replicas"):
        assert after[key] == before[key]
    assert "InvalidSpec" in cluster.events()


def test_a_deleted_model_deployment_is_forgotten() -> None:
    cluster = Cluster(canary(steps=[{"weight": 20}]), healthy())
    for _ in range(4):
        cluster.step()
    assert cluster.metrics.phase.labels("ml", "fraud", "Progressing")._value.get() == 1
    cluster.api.delete(MODEL_DEPLOYMENT, *KEY)
    cluster.catch_up()
    cluster.controller.sync(KEY)
    series = [labels for labels in cluster.metrics.phase._metrics if labels[:2] == KEY]
    assert series == [], "metrics of a deleted ModelDeployment are dropped"


def test_the_finalizer_of_older_releases_is_removed() -> None:
    body = model_deployment(make_spec(candidate=None).to_wire())
    body["metadata"]["finalizers"] = ["modelpilot.io/finalizer", "example.com/keep"]
    cluster = Cluster(body)
    cluster.step()
    assert cluster.body()["metadata"]["finalizers"] == ["example.com/keep"]


def test_engine_keys_are_the_status_fields_no_one_else_writes() -> None:
    assert "desiredWeights" in ENGINE_KEYS
    assert "phase" in ENGINE_KEYS
    others = {"versions", "replicas", "selector", "request", "weights", "observedGeneration"}
    assert not others & set(ENGINE_KEYS)


def test_the_engine_runs_only_while_it_has_work() -> None:
    settled = {
        "phase": "Stable",
        "stable": "v1",
        "desiredWeights": {"v1": 100},
        "mirrorPercent": 0,
    }
    spec = {"stable": "v1", "versions": []}
    assert not has_work({"spec": spec, "status": settled})
    assert has_work({"spec": spec, "status": {}})
    assert has_work({"spec": {**spec, "rollout": {"candidate": "v2"}}, "status": settled})
    assert has_work({"spec": {**spec, "stable": "v2"}, "status": settled})
    assert has_work({"spec": spec, "status": {**settled, "phase": "Promoted"}})
    asked = {**settled, "request": {"id": "r1", "action": "rollback"}}
    assert has_work({"spec": spec, "status": asked})
    assert not has_work({"spec": spec, "status": {**asked, "handledRequest": "r1"}})


def test_not_leader_error_is_an_api_error() -> None:
    assert NotLeaderError().reason == "NotLeader"


def test_the_watch_event_of_its_own_status_write_enqueues_nothing() -> None:
    cluster = Cluster(model_deployment(make_spec(candidate=None).to_wire()))
    cluster.step()
    queue = cluster.controller.queue
    while queue.get(0) is not None:
        pass
    cluster.controller.observe("MODIFIED", cluster.body())  # what the watch brings next
    assert queue.depth() == 0
