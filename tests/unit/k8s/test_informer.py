"""Watch caches: list, then watch; relist after 410 Gone; older versions never replace
newer ones; a kind whose CRD is missing is reported, not an error."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from modelpilot_operator.k8s.client import ApiError
from modelpilot_operator.k8s.informer import Informer
from modelpilot_operator.k8s.kinds import DEPLOYMENT, Kind


def obj(name: str, rv: int, model: str = "fraud") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "resourceVersion": str(rv),
            "labels": {"modelpilot.io/model": model},
            "managedFields": [{"manager": "modelpilot"}],
        },
    }


class Script:
    """Answers the informer's list and watch calls from a script, then stops it."""

    def __init__(self, lists: list[Any], watches: list[list[Any]]) -> None:
        self.lists = lists
        self.watches = watches
        self.calls: list[str] = []
        self.done = threading.Event()

    def list_page(
        self, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        self.calls.append(f"list {label_selector}")
        item = self.lists.pop(0)
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[no-any-return]

    def watch(
        self,
        kind: Kind,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        timeout_s: int = 270,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        self.calls.append(f"watch {resource_version}")
        if not self.watches:
            self.done.set()
            threading.Event().wait(10)
            return
        for event in self.watches.pop(0):
            if isinstance(event, Exception):
                raise event
            yield event


def run(script: Script) -> tuple[Informer, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    inf = Informer(
        script,
        DEPLOYMENT,
        "ml",
        "app.kubernetes.io/managed-by=modelpilot",
        lambda t, o: seen.append((t, o["metadata"]["name"])),
        retry_s=0.01,
        missing_retry_s=0.01,
    )
    inf.start()
    assert script.done.wait(10)
    inf.stop()
    return inf, seen


def test_list_then_watch_from_the_lists_version() -> None:
    script = Script(
        [([obj("a", 5)], "10")],
        [[("MODIFIED", obj("a", 11)), ("ADDED", obj("b", 12)), ("DELETED", obj("a", 13))]],
    )
    inf, seen = run(script)
    assert script.calls == [
        "list app.kubernetes.io/managed-by=modelpilot",
        "watch 10",
        "watch 13",
    ]
    assert inf.get("ml", "a") is None
    b = inf.get("ml", "b")
    assert b is not None
    assert "managedFields" not in b["metadata"], "not kept: never read"
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_gone_relists_and_reports_what_changed_meanwhile() -> None:
    script = Script(
        [([obj("a", 5), obj("b", 6)], "10"), ([obj("a", 20)], "21")],
        [[ApiError(410, "Gone", "too old")]],
    )
    inf, seen = run(script)
    assert script.calls[:3] == [
        "list app.kubernetes.io/managed-by=modelpilot",
        "watch 10",
        "list app.kubernetes.io/managed-by=modelpilot",
    ]
    assert inf.get("ml", "b") is None
    assert ("DELETED", "b") in seen
    assert ("MODIFIED", "a") in seen


def test_an_older_version_never_replaces_a_newer_one() -> None:
    inf = Informer(Script([], []), DEPLOYMENT, "ml", "")
    inf.store(obj("a", 30))  # what the operator just wrote
    inf._apply_event("MODIFIED", obj("a", 29))  # a watch event from before that write
    got = inf.get("ml", "a")
    assert got is not None
    assert got["metadata"]["resourceVersion"] == "30"


def test_a_missing_crd_is_reported_as_not_served() -> None:
    script = Script([ApiError(404, "NotFound", "no such kind")], [])
    script.done.set()
    inf = Informer(script, DEPLOYMENT, "ml", "", retry_s=0.01, missing_retry_s=10)
    inf.start()
    assert inf.synced.wait(5)
    inf.stop()
    assert not inf.served
    assert len(inf) == 0


def test_the_event_of_the_operators_own_write_changes_nothing() -> None:
    """The write was stored from the API's answer: its watch event is no news, and must
    not enqueue another reconcile."""
    seen: list[str] = []
    inf = Informer(Script([], []), DEPLOYMENT, "ml", "", lambda t, o: seen.append(t))
    inf.store(obj("a", 30))
    inf._apply_event("MODIFIED", obj("a", 30))
    assert seen == []
    inf._apply_event("MODIFIED", obj("a", 31))
    assert seen == ["MODIFIED"]
