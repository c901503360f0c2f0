"""An in-memory API server behind the operator's ``KubeApi`` interface.

It does what the operator's logic depends on: objects keyed by kind/namespace/name, label
selectors (``k=v`` terms), uids, generations that move on spec changes, server-side apply
as a recursive merge (lists replaced whole), server defaults filled in on write (so the
no-op check is tested against objects that differ from what was applied), discovery of
CRD-backed kinds, and a count of every write.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections import Counter
from typing import Any

from modelpilot_operator.k8s.client import FIELD_MANAGER, STATUS_FIELD_MANAGER
from modelpilot_operator.k8s.kinds import CHILD_KINDS, OPTIONAL_KINDS, Kind, kind_of

Key = tuple[str, str, str]


def _merge(live: Any, applied: Any) -> Any:
    if isinstance(live, dict) and isinstance(applied, dict):
        out = dict(live)
        for k, v in applied.items():
            out[k] = _merge(live.get(k), v)
        return out
    return copy.deepcopy(applied)


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


def _server_defaults(obj: dict[str, Any]) -> None:
    if obj["kind"] == "Deployment":
        spec = obj["spec"]
        spec.setdefault("replicas", 1)
        spec.setdefault("progressDeadlineSeconds", 600)
        pod = spec["template"]["spec"]
        pod.setdefault("restartPolicy", "Always")
        pod.setdefault("dnsPolicy", "ClusterFirst")
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            for res in c.get("resources", {}).values():
                for name, q in list(res.items()):
                    # The API server writes canonical quantities.
                    if q == "1000m":
                        res[name] = "1"
    if obj["kind"] == "Service":
        obj["spec"].setdefault("clusterIP", "10.96.0.10")
        obj["spec"].setdefault("sessionAffinity", "None")


class FakeApi:
    def __init__(self, missing_crds: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: Counter[str] = Counter()
        self.missing = set(missing_crds)
        self._rv = itertools.count(1)

    # -- helpers for tests -------------------------------------------------------------

    def total_writes(self) -> int:
        return sum(self.writes.values())

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as a user would create it (not counted as an operator write)."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._rv))
        self.objects[self._key(kind_of(obj), meta.get("namespace"), meta["name"])] = obj
        return copy.deepcopy(obj)

    def edit(self, kind: Kind, namespace: str, name: str, **paths: Any) -> None:
        """Change a live object by hand: paths use ``__`` for nesting."""
        obj = self.objects[self._key(kind, namespace, name)]
        for path, value in paths.items():
            node = obj
            *parents, last = path.split("__")
            for p in parents:
                node = node[int(p)] if isinstance(node, list) else node[p]
            node[last] = value

    def _key(self, kind: Kind, namespace: str | None, name: str) -> Key:
        return (kind.kind, namespace or "", name)

    # -- KubeApi ----------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        self._check_served(kind)
        obj = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        self._check_served(kind)
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind.kind
            and (namespace is None or ns == namespace)
            and _matches(o["metadata"].get("labels", {}), label_selector)
        ]

    def apply(
        self, obj: dict[str, Any], *, manager: str = FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        kind = kind_of(obj)
        self._check_served(kind)
        self.writes[f"apply {kind.kind}"] += 1
        meta = obj["metadata"]
        key = self._key(kind, meta.get("namespace"), meta["name"])
        live = self.objects.get(key)
        if live is None:
            new = copy.deepcopy(obj)
            new["metadata"] |= {"uid": str(uuid.uuid4()), "generation": 1}
        else:
            new = _merge(live, obj)
            if new.get("spec") != live.get("spec"):
                new["metadata"]["generation"] = live["metadata"]["generation"] + 1
        new["metadata"]["resourceVersion"] = str(next(self._rv))
        _server_defaults(new)
        self.objects[key] = new
        return copy.deepcopy(new)

    def apply_status(
        self, obj: dict[str, Any], *, manager: str = STATUS_FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        kind = kind_of(obj)
        self.writes[f"status {kind.kind}"] += 1
        meta = obj["metadata"]
        live = self.objects[self._key(kind, meta.get("namespace"), meta["name"])]
        status = dict(live.get("status") or {})
        for k, v in obj.get("status", {}).items():
            if k == "conditions":
                # A list-map keyed by type: entries of other types stay.
                by_type = {c["type"]: c for c in status.get("conditions", [])}
                by_type |= {c["type"]: c for c in v}
                status[k] = list(by_type.values())
            else:
                status[k] = copy.deepcopy(v)
        live["status"] = status
        return copy.deepcopy(live)

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        self.writes[f"delete {kind.kind}"] += 1
        return self.objects.pop(self._key(kind, namespace, name), None) is not None

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.writes[f"create {obj['kind']}"] += 1
        return self.put(obj)

    def served_kinds(self, api_version: str) -> set[str]:
        return {
            k.kind
            for k in CHILD_KINDS
            if k.api_version == api_version and OPTIONAL_KINDS.get(k.kind) not in self.missing
        }

    def _check_served(self, kind: Kind) -> None:
        if OPTIONAL_KINDS.get(kind.kind) in self.missing:
            raise AssertionError(f"{kind.kind} is not served: the operator must not ask")
