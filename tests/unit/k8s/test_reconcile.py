"""Reconcile against the in-memory API server: what is written, and when nothing is."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from modelpilot_operator.api.v1alpha1 import ModelDeployment
from modelpilot_operator.builders import BuildOptions, children_selector
from modelpilot_operator.k8s.children import installed_kinds
from modelpilot_operator.k8s.kinds import (
    CHILD_KINDS,
    DEPLOYMENT,
    HPA,
    MODEL_DEPLOYMENT,
    POD,
    SERVICE,
    VIRTUAL_SERVICE,
)
from modelpilot_operator.k8s.observe import ProviderCache
from modelpilot_operator.k8s.reconcile import ChildrenView
from modelpilot_operator.k8s.reconcile import Reconciler as CachedReconciler
from tests.api_cases import full, minimal

from .fake import FakeApi

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


class Reconciler(CachedReconciler):
    """The reconciler over a view read from the fake API server, as the watch caches
    would hold it after every earlier write arrived."""

    def reconcile(  # type: ignore[override]
        self, md: ModelDeployment, now: datetime | None = None
    ) -> Any:
        assert isinstance(self.api, FakeApi)
        ns = md.metadata.get("namespace", "default")
        kinds = installed_kinds(self.api)
        live = {
            f"{o['kind']}/{o['metadata']['name']}": o
            for kind in CHILD_KINDS
            if kind.kind in kinds
            for o in self.api.list(kind, ns, children_selector(md))
        }
        pods = self.api.list(POD, ns, f"modelpilot.io/model={md.metadata['name']}")
        return super().reconcile(md, ChildrenView(live, pods, kinds), now)


OPTIONS = BuildOptions(default_image="ghcr.io/modelpilot/runtime:0.1.0")


def _stored(api: FakeApi, obj: dict[str, Any], namespace: str = "ml") -> ModelDeployment:
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = namespace
    return ModelDeployment.model_validate(api.put(obj))


def _reload(api: FakeApi, md: ModelDeployment) -> ModelDeployment:
    live = api.get(MODEL_DEPLOYMENT, md.metadata["namespace"], md.metadata["name"])
    assert live is not None
    return ModelDeployment.model_validate(live)


def _children(api: FakeApi) -> set[str]:
    return {f"{k}/{n}" for (k, _, n) in api.objects if k != "ModelDeployment"}


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def test_first_reconcile_creates_every_child(api: FakeApi) -> None:
    md = _stored(api, full())
    result = Reconciler(api, OPTIONS).reconcile(md, NOW)
    assert _children(api) == {
        "Deployment/fraud-v1",
        "Deployment/fraud-v2",
        "Service/fraud-v1",
        "Service/fraud-v2",
        "Service/fraud",
        "HorizontalPodAutoscaler/fraud-v1",
        "PodDisruptionBudget/fraud-v1",
        "VirtualService/fraud",
        "DestinationRule/fraud",
    }
    assert result.traffic is not None
    assert result.traffic.weights == {"v1": 100}
    assert result.status_written


def test_steady_reconcile_writes_nothing(api: FakeApi) -> None:
    md = _stored(api, full())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    before = api.total_writes()
    result = reconciler.reconcile(_reload(api, md), NOW)
    assert api.total_writes() == before
    assert result.report.writes == 0
    assert not result.status_written


def test_replicas_scaled_by_the_hpa_are_not_drift(api: FakeApi) -> None:
    md = _stored(api, full())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    api.edit(DEPLOYMENT, "ml", "fraud-v1", spec__replicas=7)
    result = reconciler.reconcile(_reload(api, md), NOW)
    assert result.report.writes == 0
    # Only status follows: the version now wants 7 replicas.
    assert result.status["versions"][0]["desiredReplicas"] == 7


def test_hand_edit_is_repaired_with_one_write(api: FakeApi) -> None:
    md = _stored(api, full())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    api.edit(DEPLOYMENT, "ml", "fraud-v2", spec__template__spec__containers__0__image="evil:latest")
    result = reconciler.reconcile(_reload(api, md), NOW)
    assert result.report.applied == ["Deployment/fraud-v2"]
    dep = api.get(DEPLOYMENT, "ml", "fraud-v2")
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == OPTIONS.default_image


def test_deleted_child_is_put_back(api: FakeApi) -> None:
    md = _stored(api, full())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    api.delete(SERVICE, "ml", "fraud")
    result = reconciler.reconcile(_reload(api, md), NOW)
    assert result.report.applied == ["Service/fraud"]


def test_removed_version_is_pruned(api: FakeApi) -> None:
    md = _stored(api, full())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    obj = full()
    del obj["spec"]["rollout"]
    obj["spec"]["versions"] = obj["spec"]["versions"][:1]
    obj["metadata"] |= {"namespace": "ml", "uid": md.metadata["uid"], "generation": 2}
    md2 = ModelDeployment.model_validate(api.put(obj))
    result = reconciler.reconcile(md2, NOW)
    assert sorted(result.report.pruned) == ["Deployment/fraud-v2", "Service/fraud-v2"]
    assert "Deployment/fraud-v2" not in _children(api)
    # The DestinationRule lost its v2 subset: applied again.
    assert "DestinationRule/fraud" in result.report.applied


def test_children_of_another_owner_are_left_alone(api: FakeApi) -> None:
    md = _stored(api, full())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    stray = copy.deepcopy(api.get(DEPLOYMENT, "ml", "fraud-v2"))
    assert stray is not None
    stray["metadata"] |= {"name": "fraud-old", "ownerReferences": [{"uid": "someone-else"}]}
    api.put(stray)
    result = reconciler.reconcile(_reload(api, md), NOW)
    assert result.report.pruned == []
    assert "Deployment/fraud-old" in _children(api)


def test_scaling_change_removes_the_hpa_and_sets_replicas(api: FakeApi) -> None:
    md = _stored(api, full())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    obj = full()
    obj["spec"]["versions"][0]["scaling"] = {"minReplicas": 3, "maxReplicas": 3}
    obj["metadata"] |= {"namespace": "ml", "uid": md.metadata["uid"], "generation": 2}
    result = reconciler.reconcile(ModelDeployment.model_validate(api.put(obj)), NOW)
    assert "HorizontalPodAutoscaler/fraud-v1" in result.report.pruned
    assert api.get(HPA, "ml", "fraud-v1") is None
    dep = api.get(DEPLOYMENT, "ml", "fraud-v1")
    assert dep is not None
    assert dep["spec"]["replicas"] == 3


def test_missing_route_crd_is_reported_and_nothing_applied() -> None:
    api = FakeApi(missing_crds={"virtualservices.networking.istio.io"})
    md = _stored(api, full())
    result = Reconciler(api, OPTIONS).reconcile(md, NOW)
    assert _children(api) == set()
    assert [p.reason for p in result.problems] == ["RouteCRDMissing"]
    status = _reload(api, md).status
    assert status is not None
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    assert degraded.status == "True"
    assert degraded.reason == "RouteCRDMissing"
    assert "virtualservices.networking.istio.io" in degraded.message
    assert degraded.observed_generation == 1


def test_unsupported_storage_keeps_what_serves(api: FakeApi) -> None:
    md = _stored(api, minimal())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    obj = minimal()
    obj["spec"]["versions"][0]["model"]["storageUri"] = "gs://bucket/fraud/1"
    obj["metadata"] |= {"namespace": "ml", "uid": md.metadata["uid"], "generation": 2}
    before = copy.deepcopy(api.get(DEPLOYMENT, "ml", "fraud-v1"))
    result = reconciler.reconcile(ModelDeployment.model_validate(api.put(obj)), NOW)
    assert [p.reason for p in result.problems] == ["UnsupportedStorage"]
    assert api.get(DEPLOYMENT, "ml", "fraud-v1") == before
    assert result.report.writes == 0


def test_route_follows_desired_weights_from_status(api: FakeApi) -> None:
    md = _stored(api, full())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    live = api.objects[("ModelDeployment", "ml", "fraud")]
    live["status"] |= {"phase": "Progressing", "desiredWeights": {"v1": 75, "v2": 25}}
    result = reconciler.reconcile(_reload(api, md), NOW)
    assert result.report.applied == ["VirtualService/fraud"]
    assert result.traffic is not None
    assert result.traffic.weights == {"v1": 75, "v2": 25}
    assert result.status["weights"] == {"v1": 75, "v2": 25}


def _ready(api: FakeApi, name: str, replicas: int) -> None:
    api.edit(
        DEPLOYMENT,
        "ml",
        name,
        status={
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
        },
    )


def _pod(name: str, version: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {"modelpilot.io/model": "fraud", "modelpilot.io/version": version},
        },
        "status": status,
    }


def test_status_reports_ready_versions_and_provider(api: FakeApi) -> None:
    md = _stored(api, minimal())
    probed: list[tuple[str, int, str, str]] = []

    def probe(ip: str, port: int, model: str, version: str) -> str:
        probed.append((ip, port, model, version))
        return "CPUExecutionProvider"

    reconciler = Reconciler(api, OPTIONS, ProviderCache(probe))
    reconciler.reconcile(md, NOW)
    _ready(api, "fraud-v1", 1)
    api.put(
        _pod(
            "fraud-v1-abc",
            "v1",
            podIP="127.0.0.5",
            conditions=[{"type": "Ready", "status": "True"}],
        )
    )
    reconciler.reconcile(_reload(api, md), NOW)
    status = _reload(api, md).status
    assert status is not None
    assert [(v.name, v.ready_replicas, v.ready, v.provider) for v in status.versions] == [
        ("v1", 1, True, "CPUExecutionProvider")
    ]
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("True", "AllVersionsReady")
    assert status.replicas == 1
    assert status.selector == "modelpilot.io/model=fraud,modelpilot.io/version=v1"
    # The provider is remembered per pod: the next resync asks nobody and writes nothing.
    before = api.total_writes()
    reconciler.reconcile(_reload(api, md), NOW)
    assert probed == [("127.0.0.5", 8080, "fraud", "v1")]
    assert api.total_writes() == before


@pytest.mark.parametrize(
    ("waiting", "last", "reason", "hint"),
    [
        (
            {"reason": "CreateContainerConfigError", "message": 'secret "s3-creds" not found'},
            None,
            "ContainerConfigError",
            "create the Secret",
        ),
        (
            {"reason": "ImagePullBackOff", "message": "Back-off pulling image"},
            None,
            "ImagePullFailed",
            "runtime.image",
        ),
        (
            {"reason": "CrashLoopBackOff", "message": "back-off 40s"},
            "fetch failed: s3://models/fraud/1/ holds no objects\n",
            "CrashLoop",
            "holds no objects",
        ),
    ],
)
def test_pod_problems_become_degraded(
    api: FakeApi, waiting: dict[str, str], last: str | None, reason: str, hint: str
) -> None:
    md = _stored(api, minimal())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    cs: dict[str, Any] = {"name": "fetch-model", "state": {"waiting": waiting}}
    if last:
        cs["lastState"] = {"terminated": {"exitCode": 1, "message": last}}
    api.put(_pod("fraud-v1-abc", "v1", initContainerStatuses=[cs]))
    result = reconciler.reconcile(_reload(api, md), NOW)
    status = _reload(api, md).status
    assert status is not None
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", reason)
    assert hint in degraded.message
    assert status.versions[0].message
    assert [c["type"] for c in result.transitions()] == ["Ready", "Progressing", "Degraded"]


def test_condition_keeps_its_transition_time(api: FakeApi) -> None:
    md = _stored(api, minimal())
    reconciler = Reconciler(api, OPTIONS)
    reconciler.reconcile(md, NOW)
    later = datetime(2025, 1, 2, 4, 0, 0, tzinfo=UTC)
    result = reconciler.reconcile(_reload(api, md), later)
    assert not result.status_written
    assert result.transitions() == []
    status = _reload(api, md).status
    assert status is not None
    assert {c.last_transition_time for c in status.conditions} == {"2025-01-02T03:04:05Z"}


def test_conditions_of_the_rollout_engine_are_kept(api: FakeApi) -> None:
    md = _stored(api, minimal())
    live = api.objects[("ModelDeployment", "ml", "fraud")]
    live["status"] = {"conditions": [{"type": "Promoted", "status": "True", "reason": "Done"}]}
    Reconciler(api, OPTIONS).reconcile(_reload(api, md), NOW)
    status = _reload(api, md).status
    assert status is not None
    assert {c.type for c in status.conditions} == {"Promoted", "Ready", "Progressing", "Degraded"}


def test_virtual_service_weights_read_back(api: FakeApi) -> None:
    md = _stored(api, full())
    Reconciler(api, OPTIONS).reconcile(md, NOW)
    vs = api.get(VIRTUAL_SERVICE, "ml", "fraud")
    assert vs is not None
    assert vs["spec"]["http"][-1]["route"][0]["weight"] == 100
