"""An in-memory API server behind the operator's ``KubeApi`` interface.

It models what the operator's logic depends on:

* objects keyed by kind/namespace/name, label selectors (``k=v`` terms), uids, a
  ``resourceVersion`` that moves whenever a write changes the object (a no-op write leaves
  it, as the real server does) and a ``generation`` that moves when ``.spec`` changes;
* server-side apply with field ownership, as structured-merge-diff does it: every object
  keeps a record of the fields each manager owns, per operation (``Apply``/``Update``) and
  per subresource (the main resource, or ``status``). An apply sets the fields it sends and
  removes the ones its manager applied before and leaves out now (unless another manager
  owns them too). Changing a field another manager owns is a 409 :class:`ConflictError`
  naming the fields and the manager, unless ``force`` takes the fields over; sending the
  value the field already has makes it co-owned. Apply to the main resource ignores
  ``.status``; apply to ``/status`` touches only ``.status``;
* lists are atomic (one field) except list-maps, whose entries are owned field by field:
  the built-in ones keyed as Kubernetes keys them (containers, volumes and env by name,
  volumeMounts by mountPath, ports by port and protocol, conditions by type, ownerReferences
  by uid: see :func:`_list_keys`) and the ModelDeployment's as its CRD schema says
  (``x-kubernetes-list-type: map``; ``status.versions`` has none, so it is atomic);
  ``metadata.labels``/``annotations`` and every other map are owned key by key;
* a ``metadata.resourceVersion`` in an applied object is a precondition (409 if stale);
* non-apply writes (:meth:`FakeApi.update`, :meth:`FakeApi.edit`, :meth:`FakeApi.put`,
  :meth:`FakeApi.create`) take the fields they change under their manager with operation
  ``Update``, so a later apply of those fields without ``force`` conflicts;
* server defaults filled in on write (so the no-op check is tested against objects that
  differ from what was applied), discovery of CRD-backed kinds, and a count of every write
  request in :attr:`FakeApi.writes`.

It leaves out: validation and CEL rules, admission, finalizers and ``deletionTimestamp``
(delete is immediate, without cascading to owned objects), ``generateName``, watches
(:attr:`FakeApi.changes` only logs what was stored), ``x-kubernetes-list-type: set``
(sets are atomic here), conflicts from a change of a field's type (a leaf applied where
another manager owns fields below it), apiVersion conversion, managedFields timestamps,
and the order of merged list entries beyond "live entries first, new ones after".
"""

from __future__ import annotations

import copy
import functools
import itertools
import uuid
from collections import Counter
from typing import Any

from modelpilot_operator.k8s.client import (
    FIELD_MANAGER,
    STATUS_FIELD_MANAGER,
    ApiError,
    ConflictError,
)
from modelpilot_operator.k8s.kinds import CHILD_KINDS, OPTIONAL_KINDS, Kind, kind_of

Key = tuple[str, str, str]
# A field path: names of fields, and for an entry of a list-map its key ((field, value), ...).
EntryKey = tuple[tuple[str, Any], ...]
Path = tuple[str | EntryKey, ...]
# Who owns fields: (manager, operation, subresource); subresource "" is the main resource.
Owner = tuple[str, str, str]

MISSING: Any = object()
# Fields nobody owns: identity and bookkeeping that the server sets.
_UNOWNED_META = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "selfLink",
}
PUT_MANAGER = "kubectl"
EDIT_MANAGER = "kubectl-edit"
# What the kubernetes client's default user agent makes the server call a POST's manager.
CREATE_MANAGER = "OpenAPI-Generator"


# -- list types -------------------------------------------------------------------------


@functools.cache
def _crd_list_maps() -> dict[tuple[str, ...], tuple[str, ...]]:
    """The ModelDeployment's list-maps, by field path (names only), from its CRD schema."""
    from modelpilot_operator.crdgen import build_crd

    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    out: dict[tuple[str, ...], tuple[str, ...]] = {}

    def walk(node: dict[str, Any], names: tuple[str, ...]) -> None:
        if node.get("x-kubernetes-list-type") == "map":
            out[names] = tuple(node["x-kubernetes-list-map-keys"])
        for name, sub in node.get("properties", {}).items():
            walk(sub, (*names, name))
        if isinstance(node.get("items"), dict):
            walk(node["items"], names)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], (*names, "*"))

    walk(root, ())
    return out


def _list_keys(kind: str, names: tuple[str, ...]) -> tuple[str, ...] | None:
    """The keys of the list at ``names`` if it is a list-map; None if it is atomic."""
    if kind == "ModelDeployment":
        if names[:1] == ("metadata",):
            return ("uid",) if names == ("metadata", "ownerReferences") else None
        return _crd_list_maps().get(names)
    last = names[-1]
    if names == ("metadata", "ownerReferences"):
        return ("uid",)
    if last in ("containers", "initContainers", "ephemeralContainers", "volumes", "env"):
        return ("name",)
    if last == "volumeMounts":
        return ("mountPath",)
    if last == "ports":
        in_container = "containers" in names or "initContainers" in names
        return ("containerPort", "protocol") if in_container else ("port", "protocol")
    if last == "conditions" and names[0] == "status":
        return ("type",)
    return None


def _entry_key(item: dict[str, Any], keys: tuple[str, ...]) -> EntryKey:
    # protocol is the one key field with a server default.
    return tuple((k, item.get(k, "TCP" if k == "protocol" else None)) for k in keys)


def _names(path: Path) -> tuple[str, ...]:
    return tuple(p for p in path if isinstance(p, str))


def render(path: Path) -> str:
    """A path as the server's conflict messages write it: ``.spec.ports[port=80,...]``."""
    out = ""
    for p in path:
        out += f".{p}" if isinstance(p, str) else "[" + ",".join(f"{k}={v}" for k, v in p) + "]"
    return out


# -- field sets and paths ---------------------------------------------------------------


def _fields(kind: str, value: Any, path: Path = ()) -> set[Path]:
    """The fields an object sets: leaves, list-map entries, empty maps (below the top)."""
    if isinstance(value, dict) and (value or len(path) < 2):
        out: set[Path] = set()
        for k, v in value.items():
            if path == () and k in ("apiVersion", "kind"):
                continue
            if path == ("metadata",) and k in _UNOWNED_META:
                continue
            out |= _fields(kind, v, (*path, k))
        return out
    if isinstance(value, list) and (keys := _list_keys(kind, _names(path))):
        out = set()
        for item in value:
            entry = (*path, _entry_key(item, keys))
            out |= {entry} | _fields(kind, item, entry)
        return out
    return {path}


def _get(obj: Any, path: Path) -> Any:
    for p in path:
        if isinstance(p, str):
            if not isinstance(obj, dict) or p not in obj:
                return MISSING
            obj = obj[p]
        else:
            keys = tuple(k for k, _ in p)
            if not isinstance(obj, list):
                return MISSING
            obj = next((i for i in obj if _entry_key(i, keys) == p), MISSING)
            if obj is MISSING:
                return MISSING
    return obj


def _remove(obj: dict[str, Any], path: Path) -> None:
    parent = _get(obj, path[:-1])
    last = path[-1]
    if isinstance(last, str):
        if isinstance(parent, dict):
            parent.pop(last, None)
    elif isinstance(parent, list):
        keys = tuple(k for k, _ in last)
        parent[:] = [i for i in parent if _entry_key(i, keys) != last]


def _prune_empty(obj: dict[str, Any], path: Path, keep: set[Path]) -> None:
    """Drop maps and lists left empty by removing ``path``, unless someone owns them."""
    for n in range(len(path) - 1, 0, -1):
        parent = path[:n]
        if parent in keep or _get(obj, parent) not in ({}, []):
            return
        _remove(obj, parent)


def _merge(kind: str, live: Any, applied: Any, path: Path = ()) -> Any:
    """``applied`` over ``live``: maps field by field, list-maps entry by entry (live
    entries first, new ones after), anything else replaced."""
    if isinstance(live, dict) and isinstance(applied, dict):
        out = dict(live)
        for k, v in applied.items():
            out[k] = _merge(kind, live.get(k), v, (*path, k))
        return out
    keys = _list_keys(kind, _names(path)) if path else None
    if keys and isinstance(live, list) and isinstance(applied, list):
        new = {_entry_key(i, keys): i for i in applied}
        merged = []
        for item in live:
            k = _entry_key(item, keys)
            merged.append(_merge(kind, item, new.pop(k), path) if k in new else item)
        return merged + [copy.deepcopy(i) for i in new.values()]
    return copy.deepcopy(applied)


def _same(a: Any, b: Any) -> bool:
    """Whether a field has the same value in two objects; a map (or list-map entry) that
    is there in both is the same field, whatever is inside it."""
    return (isinstance(a, dict) and isinstance(b, dict)) or a == b


def _is_entry_key(path: Path) -> bool:
    """Whether ``path`` is a key field of a list-map entry (it goes with its entry)."""
    return len(path) > 1 and not isinstance(path[-2], str) and path[-1] in dict(path[-2])


def _below(paths: set[Path], path: Path) -> bool:
    """Whether ``paths`` holds ``path`` or a field inside it."""
    return any(p[: len(path)] == path for p in paths)


def _subresource(path: Path) -> str:
    return "status" if path[:1] == ("status",) else ""


# -- objects ----------------------------------------------------------------------------


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


def _server_defaults(obj: dict[str, Any]) -> None:
    if obj["kind"] == "Deployment" and "spec" in obj:
        spec = obj["spec"]
        spec.setdefault("replicas", 1)
        spec.setdefault("progressDeadlineSeconds", 600)
        pod = spec.get("template", {}).get("spec", {})
        pod.setdefault("restartPolicy", "Always")
        pod.setdefault("dnsPolicy", "ClusterFirst")
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            for port in c.get("ports", []):
                port.setdefault("protocol", "TCP")
            for res in c.get("resources", {}).values():
                for name, q in list(res.items()):
                    # The API server writes canonical quantities.
                    if q == "1000m":
                        res[name] = "1"
    if obj["kind"] == "Service" and "spec" in obj:
        obj["spec"].setdefault("clusterIP", "10.96.0.10")
        obj["spec"].setdefault("sessionAffinity", "None")
        for port in obj["spec"].get("ports", []):
            port.setdefault("protocol", "TCP")


def _modified(plural: str, name: str) -> ConflictError:
    return ConflictError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
    )


def _conflict_error(conflicts: dict[Owner, list[Path]]) -> ConflictError:
    n = sum(len(ps) for ps in conflicts.values())
    parts = [
        f'conflict with "{m}"'
        + (f' with subresource "{sub}"' if sub else "")
        + ": "
        + ", ".join(render(p) for p in sorted(ps, key=render))
        for (m, _, sub), ps in sorted(conflicts.items())
    ]
    return ConflictError(
        409, "Conflict", f"Apply failed with {n} conflict{'s' * (n > 1)}: " + "; ".join(parts)
    )


class FakeApi:
    def __init__(self, missing_crds: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: Counter[str] = Counter()
        self.missing = set(missing_crds)
        # Every change stored, in order: (verb, kind, namespace, name, resourceVersion).
        self.changes: list[tuple[str, str, str, str, str]] = []
        self._managed: dict[Key, dict[Owner, set[Path]]] = {}
        self._rv = itertools.count(1)

    # -- helpers for tests -------------------------------------------------------------

    def total_writes(self) -> int:
        return sum(self.writes.values())

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as a user would create or replace it (not counted as an operator
        write); the fields it changes are owned by ``kubectl`` (operation Update)."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.pop("resourceVersion", None)
        key = self._key(kind_of(obj), meta.get("namespace"), meta["name"])
        return self._record(key, obj, PUT_MANAGER, "put", keep_generation=True)

    def edit(self, kind: Kind, namespace: str, name: str, **paths: Any) -> None:
        """Change a live object by hand, as ``kubectl edit`` would (manager
        ``kubectl-edit``, operation Update): paths use ``__`` for nesting."""
        key = self._key(kind, namespace, name)
        obj = copy.deepcopy(self.objects[key])
        for path, value in paths.items():
            node = obj
            *parents, last = path.split("__")
            for p in parents:
                node = node[int(p)] if isinstance(node, list) else node[p]
            node[last] = value
        self._record(key, obj, EDIT_MANAGER, "edit")

    def update(self, obj: dict[str, Any], *, manager: str, subresource: str = "") -> dict[str, Any]:
        """A non-apply write (PUT) of the whole object or of its status, as a controller's
        update or ``kubectl edit`` does: the fields it changes become ``manager``'s
        (operation Update), taken from whoever owned them. Not counted in :attr:`writes`."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        key = self._key(kind, meta.get("namespace"), meta["name"])
        live = self.objects.get(key)
        if live is None:
            raise ApiError(404, "NotFound", f'{kind.plural} "{meta["name"]}" not found')
        rv = meta.get("resourceVersion")
        if rv is not None and rv != live["metadata"]["resourceVersion"]:
            raise _modified(kind.plural, meta["name"])
        if subresource == "status":
            new = copy.deepcopy(live) | {"status": copy.deepcopy(obj.get("status") or {})}
        else:
            # The main resource: everything but status, and the server's own metadata.
            new = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
            new["metadata"] = {k: v for k, v in meta.items() if k not in _UNOWNED_META} | {
                k: v for k, v in live["metadata"].items() if k in _UNOWNED_META
            }
            if "status" in live:
                new["status"] = copy.deepcopy(live["status"])
        return self._record(key, new, manager, "update")

    def managed_fields(self, kind: Kind, namespace: str | None, name: str) -> list[dict[str, Any]]:
        """The ownership record, as ``metadata.managedFields`` would show it (paths
        rendered like ``.spec.template.spec.containers[name=runtime].image``)."""
        managed = self._managed.get(self._key(kind, namespace, name), {})
        return [
            {
                "manager": m,
                "operation": op,
                "subresource": sub,
                "fields": sorted(render(p) for p in paths),
            }
            for (m, op, sub), paths in sorted(managed.items())
        ]

    def owners(self, kind: Kind, namespace: str | None, name: str, field: str) -> set[str]:
        """The managers that own ``field`` (rendered as in :meth:`managed_fields`)."""
        return {
            entry["manager"]
            for entry in self.managed_fields(kind, namespace, name)
            if field in entry["fields"]
        }

    def _key(self, kind: Kind, namespace: str | None, name: str) -> Key:
        return (kind.kind, namespace or "", name)

    # -- storing --------------------------------------------------------------------------

    def _store(
        self,
        key: Key,
        new: dict[str, Any],
        managed: dict[Owner, set[Path]],
        verb: str,
        keep_generation: bool = False,
    ) -> dict[str, Any]:
        """Store ``new`` with ``managed``, moving resourceVersion/generation if it changed."""
        live = self.objects.get(key)
        meta = new["metadata"]
        if live is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
        elif not keep_generation:
            meta["uid"] = live["metadata"]["uid"]
            meta["generation"] = live["metadata"]["generation"] + (
                new.get("spec") != live.get("spec")
            )
        # Ownership of fields that are gone goes with them.
        managed = {
            owner: {p for p in paths if _get(new, p) is not MISSING}
            for owner, paths in managed.items()
        }
        managed = {owner: paths for owner, paths in managed.items() if paths}
        if live is not None:
            meta["resourceVersion"] = live["metadata"]["resourceVersion"]
            if new == live and managed == self._managed.get(key, {}):
                return copy.deepcopy(live)
        meta["resourceVersion"] = str(next(self._rv))
        self.objects[key] = new
        self._managed[key] = managed
        self.changes.append((verb, *key, meta["resourceVersion"]))
        return copy.deepcopy(new)

    def _record(
        self,
        key: Key,
        new: dict[str, Any],
        manager: str,
        verb: str,
        keep_generation: bool = False,
    ) -> dict[str, Any]:
        """Store a non-apply write: the fields it changes become ``manager``'s (Update)."""
        live = self.objects.get(key) or {}
        _server_defaults(new)
        managed = {o: set(ps) for o, ps in self._managed.get(key, {}).items()}
        changed = {p for p in _fields(key[0], new) if not _same(_get(new, p), _get(live, p))}
        for owner in managed:
            managed[owner] -= changed
        for sub in ("", "status"):
            mine = {p for p in changed if _subresource(p) == sub}
            if mine:
                managed.setdefault((manager, "Update", sub), set()).update(mine)
        return self._store(key, new, managed, verb, keep_generation)

    def _apply(
        self, obj: dict[str, Any], manager: str, force: bool, subresource: str
    ) -> dict[str, Any]:
        kind = kind_of(obj)
        meta = obj["metadata"]
        key = self._key(kind, meta.get("namespace"), meta["name"])
        live = self.objects.get(key)
        if live is None and subresource:
            raise ApiError(404, "NotFound", f'{kind.plural} "{meta["name"]}" not found')
        rv = meta.get("resourceVersion")
        if rv is not None and (live is None or rv != live["metadata"]["resourceVersion"]):
            raise _modified(kind.plural, meta["name"])
        # What this apply may touch: .status on /status, everything else on the resource.
        if subresource == "status":
            part = {"status": copy.deepcopy(obj.get("status") or {})}
        else:
            part = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
            part["metadata"] = {k: v for k, v in meta.items() if k not in _UNOWNED_META}
        applied = _fields(kind.kind, part)
        me: Owner = (manager, "Apply", subresource)
        managed = {o: set(ps) for o, ps in self._managed.get(key, {}).items()}
        others: set[Path] = set()
        for owner, paths in managed.items():
            others |= paths if owner != me else set()
        new = (
            copy.deepcopy(live)
            if live is not None
            else {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "metadata": {k: meta[k] for k in ("name", "namespace") if k in meta},
            }
        )
        # Fields this manager applied before and leaves out now go, unless shared.
        for path in sorted(managed.get(me, set()) - applied, key=len):
            if not _below(others, path) and not _is_entry_key(path):
                _remove(new, path)
                _prune_empty(new, path, others | applied)
        new = _merge(kind.kind, new, part)
        _server_defaults(new)
        conflicts: dict[Owner, list[Path]] = {}
        for owner, paths in managed.items():
            if owner == me:
                continue
            for path in paths & applied:
                if not _same(_get(new, path), _get(live, path)):
                    conflicts.setdefault(owner, []).append(path)
        if conflicts and not force:
            raise _conflict_error(conflicts)
        for owner, lost in conflicts.items():
            managed[owner] -= set(lost)
        managed[me] = applied
        return self._store(key, new, managed, "apply")

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
        return self._apply(obj, manager, force, "")

    def apply_status(
        self, obj: dict[str, Any], *, manager: str = STATUS_FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        kind = kind_of(obj)
        self._check_served(kind)
        self.writes[f"status {kind.kind}"] += 1
        return self._apply(obj, manager, force, "status")

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        self.writes[f"delete {kind.kind}"] += 1
        key = self._key(kind, namespace, name)
        self._managed.pop(key, None)
        gone = self.objects.pop(key, None)
        if gone is not None:
            self.changes.append(("delete", *key, gone["metadata"]["resourceVersion"]))
        return gone is not None

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind = kind_of(obj)
        self.writes[f"create {kind.kind}"] += 1
        meta = obj["metadata"]
        key = self._key(kind, meta.get("namespace"), meta["name"])
        if key in self.objects:
            raise ConflictError(
                409, "AlreadyExists", f'{kind.plural} "{meta["name"]}" already exists'
            )
        new = copy.deepcopy(obj)
        for k in _UNOWNED_META - {"name", "namespace"}:
            new["metadata"].pop(k, None)
        return self._record(key, new, CREATE_MANAGER, "create")

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT: :meth:`update` under the operator's manager, counted as a write."""
        self.writes[f"update {obj['kind']}"] += 1
        return self.update(obj, manager=FIELD_MANAGER)

    def merge_patch(
        self, kind: Kind, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch (maps merged, lists and scalars replaced, null removes)."""
        self.writes[f"patch {kind.kind}"] += 1
        key = self._key(kind, namespace, name)
        live = self.objects.get(key)
        if live is None:
            raise ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')
        rv = (patch.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != live["metadata"]["resourceVersion"]:
            raise _modified(kind.plural, name)

        def merge(target: Any, change: Any) -> Any:
            if not isinstance(change, dict):
                return copy.deepcopy(change)
            out = dict(target) if isinstance(target, dict) else {}
            for k, v in change.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = merge(out.get(k), v)
            return out

        new = merge(copy.deepcopy(live), patch)
        new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        return self._record(key, new, FIELD_MANAGER, "patch")

    def served_kinds(self, api_version: str) -> set[str]:
        return {
            k.kind
            for k in CHILD_KINDS
            if k.api_version == api_version and OPTIONAL_KINDS.get(k.kind) not in self.missing
        }

    def _check_served(self, kind: Kind) -> None:
        if OPTIONAL_KINDS.get(kind.kind) in self.missing:
            raise AssertionError(f"{kind.kind} is not served: the operator must not ask")
