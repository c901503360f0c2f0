"""The API client counts every write request it sends, for the operator's metrics."""

from __future__ import annotations

from typing import Any

from modelpilot_operator.k8s.client import ApiServer
from modelpilot_operator.k8s.kinds import SERVICE


class _Response:
    status = 200
    data = b"{}"

    def read(self) -> None:
        return None


class _StubClient:
    """Answers every request with 200 and an empty object; remembers the methods."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def param_serialize(self, *, method: str, **_: Any) -> tuple[str]:
        self.methods.append(method)
        return (method,)

    def call_api(self, *_: Any, **__: Any) -> _Response:
        return _Response()


def test_every_write_request_is_reported_reads_are_not() -> None:
    seen: list[tuple[str, str]] = []
    stub = _StubClient()
    api = ApiServer(stub, on_write=lambda verb, kind: seen.append((verb, kind)))
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ml"}}
    md = {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ml"},
    }
    api.get(SERVICE, "ml", "s")
    api.apply(svc)
    api.apply_status(md)
    api.delete(SERVICE, "ml", "s")
    api.create(svc)
    assert stub.methods == ["GET", "PATCH", "PATCH", "DELETE", "POST"]
    assert seen == [
        ("apply", "Service"),
        ("apply", "ModelDeployment"),
        ("delete", "Service"),
        ("create", "Service"),
    ]
    assert sum(api.writes.values()) == 4


def test_a_replica_that_does_not_lead_sends_no_write() -> None:
    import pytest

    from modelpilot_operator.k8s.client import NotLeaderError

    stub = _StubClient()
    leading = [False]
    api = ApiServer(stub, may_write=lambda: leading[0])
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ml"}}
    api.get(SERVICE, "ml", "s")
    for write in (
        lambda: api.apply(svc),
        lambda: api.apply_status(svc),
        lambda: api.create(svc),
        lambda: api.replace(svc),
        lambda: api.delete(SERVICE, "ml", "s"),
        lambda: api.merge_patch(SERVICE, "ml", "s", {}),
    ):
        with pytest.raises(NotLeaderError):
            write()
    assert stub.methods == ["GET"], "reads go on; nothing was written"
    leading[0] = True
    api.apply(svc)
    assert stub.methods == ["GET", "PATCH"]
