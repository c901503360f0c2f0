"""The in-memory API server itself: server-side apply as the real one does it."""

from __future__ import annotations

from typing import Any

import pytest

from modelpilot_operator.k8s.client import ApiError, ConflictError
from modelpilot_operator.k8s.kinds import DEPLOYMENT, MODEL_DEPLOYMENT

from .fake import FakeApi

OP = "modelpilot"


def _dep(**spec: Any) -> dict[str, Any]:
    """A Deployment as a manager would apply it; ``spec`` keys replace the defaults here."""
    pod = {
        "containers": [
            {"name": "runtime", "image": "runtime:1", "ports": [{"containerPort": 8080}]}
        ]
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ml", "labels": {"app": "web"}},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"spec": pod}} | spec,
    }


def _md(status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml"},
        "spec": {"versions": [{"name": "v1"}]},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _live(api: FakeApi) -> dict[str, Any]:
    obj = api.get(DEPLOYMENT, "ml", "web")
    assert obj is not None
    return obj


def _cond(type_: str, status: str = "True") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": "R"}


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def test_apply_creates_with_defaults_and_records_the_fields_it_sent(api: FakeApi) -> None:
    out = api.apply(_dep(), manager=OP)
    meta = out["metadata"]
    assert meta["uid"]
    assert meta["generation"] == 1
    assert meta["resourceVersion"]
    assert out["spec"]["replicas"] == 1  # a server default: nobody owns it
    assert api.managed_fields(DEPLOYMENT, "ml", "web") == [
        {
            "manager": OP,
            "operation": "Apply",
            "subresource": "",
            "fields": [
                ".metadata.labels.app",
                ".spec.selector.matchLabels.app",
                ".spec.template.spec.containers[name=runtime]",
                ".spec.template.spec.containers[name=runtime].image",
                ".spec.template.spec.containers[name=runtime].name",
                ".spec.template.spec.containers[name=runtime].ports[containerPort=8080,protocol=TCP]",
                ".spec.template.spec.containers[name=runtime].ports[containerPort=8080,protocol=TCP].containerPort",
            ],
        }
    ]
    assert api.writes == {"apply Deployment": 1}


def test_an_apply_that_changes_nothing_keeps_resource_version(api: FakeApi) -> None:
    rv = api.apply(_dep(), manager=OP)["metadata"]["resourceVersion"]
    again = api.apply(_dep(), manager=OP)
    assert again["metadata"]["resourceVersion"] == rv
    assert api.total_writes() == 2  # still a write request


def test_generation_moves_on_spec_changes_only(api: FakeApi) -> None:
    first = api.apply(_dep(), manager=OP)["metadata"]
    labelled = _dep()
    labelled["metadata"]["labels"]["tier"] = "gold"
    second = api.apply(labelled, manager=OP)["metadata"]
    assert second["generation"] == 1
    assert int(second["resourceVersion"]) > int(first["resourceVersion"])
    third = api.apply(_dep(replicas=3) | {"metadata": labelled["metadata"]}, manager=OP)
    assert third["metadata"]["generation"] == 2


def test_fields_a_manager_stops_sending_are_removed(api: FakeApi) -> None:
    api.apply(_dep(minReadySeconds=5), manager=OP)
    dropped = _dep()
    del dropped["metadata"]["labels"]
    api.apply(dropped, manager=OP)
    live = _live(api)
    assert "minReadySeconds" not in live["spec"]
    assert "labels" not in live["metadata"]
    assert live["spec"]["replicas"] == 1  # defaults are nobody's: they stay


def test_a_dropped_field_another_manager_also_owns_stays(api: FakeApi) -> None:
    api.apply(_dep(minReadySeconds=5), manager=OP)
    api.apply(_dep(minReadySeconds=5), manager="other")
    api.apply(_dep(), manager=OP)
    assert _live(api)["spec"]["minReadySeconds"] == 5
    assert api.owners(DEPLOYMENT, "ml", "web", ".spec.minReadySeconds") == {"other"}


def test_changing_another_managers_field_conflicts_unless_forced(api: FakeApi) -> None:
    api.apply(_dep(replicas=3), manager="scaler")
    with pytest.raises(ConflictError) as err:
        api.apply(_dep(replicas=5), manager=OP, force=False)
    assert err.value.status == 409
    assert '"scaler"' in err.value.message
    assert ".spec.replicas" in err.value.message
    assert _live(api)["spec"]["replicas"] == 3
    api.apply(_dep(replicas=5), manager=OP, force=True)
    assert _live(api)["spec"]["replicas"] == 5
    assert api.owners(DEPLOYMENT, "ml", "web", ".spec.replicas") == {OP}
    # The scaler lost the field: when it stops sending it, the operator's value stays.
    api.apply(_dep(), manager="scaler")
    assert _live(api)["spec"]["replicas"] == 5


def test_the_same_value_is_co_owned_without_conflict(api: FakeApi) -> None:
    api.apply(_dep(replicas=3), manager="scaler")
    api.apply(_dep(replicas=3), manager=OP, force=False)
    assert api.owners(DEPLOYMENT, "ml", "web", ".spec.replicas") == {"scaler", OP}


def test_atomic_lists_are_one_field(api: FakeApi) -> None:
    tol = [{"key": "gpu", "operator": "Exists"}]
    api.apply(_dep(template={"spec": {"tolerations": tol}}), manager="other")
    with pytest.raises(ConflictError, match="tolerations"):
        api.apply(_dep(template={"spec": {"tolerations": tol[:0]}}), manager=OP, force=False)
    fields = api.managed_fields(DEPLOYMENT, "ml", "web")[0]["fields"]
    assert ".spec.template.spec.tolerations" in fields
    assert not any(f.startswith(".spec.template.spec.tolerations.") for f in fields)


def test_list_map_entries_of_other_managers_stay(api: FakeApi) -> None:
    api.apply(_dep(), manager=OP)
    sidecar = _dep()
    sidecar["spec"]["template"]["spec"]["containers"] = [{"name": "proxy", "image": "envoy"}]
    api.apply(sidecar, manager="injector")
    api.apply(_dep(), manager=OP)
    names = [c["name"] for c in _live(api)["spec"]["template"]["spec"]["containers"]]
    assert names == ["runtime", "proxy"]
    # An entry another manager does not share goes when its manager drops it.
    sidecar["spec"]["template"]["spec"]["containers"] = []
    api.apply(sidecar, manager="injector")
    names = [c["name"] for c in _live(api)["spec"]["template"]["spec"]["containers"]]
    assert names == ["runtime"]


def test_labels_are_owned_key_by_key(api: FakeApi) -> None:
    api.apply(_dep(), manager=OP)
    mine = _dep()
    mine["metadata"]["labels"] = {"team": "ml"}
    api.apply(mine, manager="someone")
    assert _live(api)["metadata"]["labels"] == {"app": "web", "team": "ml"}
    mine["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(ConflictError, match=r"\.metadata\.labels\.app"):
        api.apply(mine, manager="someone", force=False)


def test_conditions_are_owned_by_type_on_the_status_subresource(api: FakeApi) -> None:
    api.apply(_md(), manager="user")
    api.apply_status(_md({"conditions": [_cond("Ready")]}), manager="reconciler")
    api.apply_status(_md({"conditions": [_cond("Promoted")]}), manager="engine")
    api.apply_status(_md({"conditions": [_cond("Ready", "False")]}), manager="reconciler")
    md = api.get(MODEL_DEPLOYMENT, "ml", "fraud")
    assert md is not None
    assert {c["type"]: c["status"] for c in md["status"]["conditions"]} == {
        "Ready": "False",
        "Promoted": "True",
    }
    assert api.writes == {"apply ModelDeployment": 1, "status ModelDeployment": 3}
    api.apply_status(_md({"conditions": []}), manager="engine")
    md = api.get(MODEL_DEPLOYMENT, "ml", "fraud")
    assert md is not None
    assert [c["type"] for c in md["status"]["conditions"]] == ["Ready"]
    with pytest.raises(ConflictError, match='"reconciler" with subresource "status"'):
        api.apply_status(_md({"conditions": [_cond("Ready")]}), manager="engine", force=False)


def test_status_and_main_resource_touch_only_their_part(api: FakeApi) -> None:
    created = api.apply(_md({"phase": "Ignored"}), manager="user")
    assert "status" not in created
    spec_change = _md({"phase": "Progressing"})
    spec_change["spec"]["versions"].append({"name": "v2"})
    spec_change["metadata"]["labels"] = {"ignored": "yes"}
    out = api.apply_status(spec_change, manager="engine")
    assert out["status"] == {"phase": "Progressing"}
    assert out["spec"] == _md()["spec"]
    assert "labels" not in out["metadata"]
    assert out["metadata"]["generation"] == 1
    # The main resource's apply leaves out status, so it removes none of it.
    out = api.apply(_md({"phase": "Other"}), manager="user")
    assert out["status"] == {"phase": "Progressing"}


def test_model_deployment_lists_follow_the_crd(api: FakeApi) -> None:
    api.apply(_md(), manager="user")
    gitops = _md()
    gitops["spec"]["versions"] = [{"name": "v2"}]
    api.apply(gitops, manager="gitops")
    md = api.get(MODEL_DEPLOYMENT, "ml", "fraud")
    assert md is not None
    assert [v["name"] for v in md["spec"]["versions"]] == ["v1", "v2"]
    # status.versions has no list type in the CRD: atomic.
    api.apply_status(_md({"versions": [{"name": "v1", "ready": True}]}), manager="reconciler")
    with pytest.raises(ConflictError, match=r"\.status\.versions"):
        api.apply_status(_md({"versions": [{"name": "v2"}]}), manager="engine", force=False)


def test_a_stale_resource_version_is_refused(api: FakeApi) -> None:
    rv = api.apply(_dep(), manager=OP)["metadata"]["resourceVersion"]
    api.apply(_dep(replicas=2), manager=OP)
    stale = _dep(replicas=4)
    stale["metadata"]["resourceVersion"] = rv
    with pytest.raises(ConflictError, match="the object has been modified"):
        api.apply(stale, manager=OP)
    stale["metadata"]["resourceVersion"] = _live(api)["metadata"]["resourceVersion"]
    assert api.apply(stale, manager=OP)["spec"]["replicas"] == 4


def test_updates_take_the_fields_they_change(api: FakeApi) -> None:
    api.apply(_dep(replicas=2), manager=OP)
    edited = _live(api)
    edited["spec"]["replicas"] = 7
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    api.update(edited, manager="kubectl-edit")
    assert api.owners(DEPLOYMENT, "ml", "web", ".spec.replicas") == {"kubectl-edit"}
    assert api.writes == {"apply Deployment": 1}
    with pytest.raises(ConflictError) as err:
        api.apply(_dep(replicas=2), manager=OP, force=False)
    assert "2 conflicts" in err.value.message
    assert '"kubectl-edit"' in err.value.message
    api.apply(_dep(replicas=2), manager=OP, force=True)
    live = _live(api)
    assert live["spec"]["replicas"] == 2
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "runtime:1"


def test_edit_is_an_update_by_kubectl_edit(api: FakeApi) -> None:
    api.apply(_dep(), manager=OP)
    api.edit(DEPLOYMENT, "ml", "web", spec__template__spec__containers__0__image="evil:1")
    api.edit(DEPLOYMENT, "ml", "web", status={"readyReplicas": 1})
    image = ".spec.template.spec.containers[name=runtime].image"
    assert api.owners(DEPLOYMENT, "ml", "web", image) == {"kubectl-edit"}
    updates = [e for e in api.managed_fields(DEPLOYMENT, "ml", "web") if e["operation"] == "Update"]
    assert [(e["subresource"], e["fields"]) for e in updates] == [
        ("", [image]),
        ("status", [".status.readyReplicas"]),
    ]
    with pytest.raises(ConflictError, match="kubectl-edit"):
        api.apply(_dep(), manager=OP, force=False)


def test_status_of_a_missing_object_is_not_found(api: FakeApi) -> None:
    with pytest.raises(ApiError) as err:
        api.apply_status(_md({"phase": "Progressing"}))
    assert err.value.status == 404


def test_create_and_delete(api: FakeApi) -> None:
    api.create(_dep())
    with pytest.raises(ConflictError) as err:
        api.create(_dep())
    assert err.value.reason == "AlreadyExists"
    assert api.delete(DEPLOYMENT, "ml", "web")
    assert not api.delete(DEPLOYMENT, "ml", "web")
    assert api.managed_fields(DEPLOYMENT, "ml", "web") == []
    assert api.writes == {"create Deployment": 2, "delete Deployment": 2}
    assert [c[0] for c in api.changes] == ["create", "delete"]


def test_owner_references_are_keyed_by_uid(api: FakeApi) -> None:
    ref = {"apiVersion": "v1", "kind": "X", "name": "a", "uid": "u1"}
    first = _dep()
    first["metadata"]["ownerReferences"] = [ref]
    api.apply(first, manager=OP)
    second = _dep()
    second["metadata"]["ownerReferences"] = [ref | {"name": "b", "uid": "u2"}]
    api.apply(second, manager="other")
    refs = _live(api)["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == ["u1", "u2"]
