"""Apply a ModelDeployment's children and prune the ones it no longer wants.

A child is applied only when it is missing, when what the operator would apply changed
(a hash of it sits in an annotation, so dropped fields count too), or when the live object
no longer contains what was applied (someone edited it). Otherwise nothing is written, so a
steady resync costs reads only. Children of kinds whose CRD is missing are skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..builders import ANNOTATION_APPLIED
from .client import KubeApi
from .kinds import CHILD_KINDS, OPTIONAL_KINDS, kind_of


@dataclass
class ApplyReport:
    """What a reconcile did, by ``Kind/name``."""

    applied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def writes(self) -> int:
        return len(self.applied) + len(self.pruned)


def _key(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def content_hash(obj: dict[str, Any]) -> str:
    """A hash of the object as the operator means it (its own annotation left out)."""
    doc = json.loads(json.dumps(obj))
    doc.get("metadata", {}).get("annotations", {}).pop(ANNOTATION_APPLIED, None)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(obj))
    out["metadata"].setdefault("annotations", {})[ANNOTATION_APPLIED] = content_hash(obj)
    return out


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    # The API server writes quantities in canonical form ("1000m" comes back as "1").
    if isinstance(want, str | int) and isinstance(have, str | int):
        a, b = _QUANTITY.match(str(want)), _QUANTITY.match(str(have))
        if a and b:
            return bool(
                abs(float(a[1]) * _SUFFIX[a[2] or ""] - float(b[1]) * _SUFFIX[b[2] or ""]) < 1e-9
            )
    return False


def contains(live: Any, want: Any) -> bool:
    """Whether ``live`` holds everything in ``want`` (server defaults and others' fields
    in ``live`` are ignored; lists must match item by item)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            k in live and contains(live[k], v) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(live) == len(want)
            and all(contains(a, b) for a, b in zip(live, want, strict=True))
        )
    return _same_scalar(want, live)


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """``desired`` carries its hash annotation (see :func:`with_hash`)."""
    if live is None:
        return True
    applied = live.get("metadata", {}).get("annotations", {}).get(ANNOTATION_APPLIED)
    if applied != desired["metadata"]["annotations"][ANNOTATION_APPLIED]:
        return True
    return not contains(live, desired)


def installed_kinds(api: KubeApi) -> set[str]:
    """Child kinds the cluster serves (built-in ones always; CRD-backed ones if installed)."""
    out = {k.kind for k in CHILD_KINDS if k.kind not in OPTIONAL_KINDS}
    by_version: dict[str, list[str]] = {}
    for k in CHILD_KINDS:
        if k.kind in OPTIONAL_KINDS:
            by_version.setdefault(k.api_version, []).append(k.kind)
    for api_version, kinds in by_version.items():
        served = api.served_kinds(api_version)
        out |= {k for k in kinds if k in served}
    return out


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or [])


def reconcile_children(
    api: KubeApi,
    namespace: str,
    owner_uid: str,
    live: dict[str, dict[str, Any]],
    desired: list[dict[str, Any]],
    kinds: set[str],
) -> ApplyReport:
    """Make the children of one ModelDeployment equal ``desired``.

    ``live``: its children as they are now by ``Kind/name`` (from the watch caches).
    ``kinds``: the kinds the cluster serves; desired objects of other kinds are skipped
    (the caller reports that). Children another owner holds are never pruned.
    """
    report = ApplyReport()
    wanted = set()
    for obj in desired:
        if kind_of(obj).kind not in kinds:
            continue
        key = _key(obj)
        wanted.add(key)
        target = with_hash(obj)
        current = live.get(key)
        if needs_apply(target, current):
            # Forced: the operator is the one owner of its children, and an edit by hand
            # (another field manager) is drift to repair.
            report.live[key] = api.apply(target, force=True)
            report.applied.append(key)
        else:
            assert current is not None
            report.live[key] = current
            report.unchanged.append(key)
    for key, obj in sorted(live.items()):
        if key in wanted or not _owned_by(obj, owner_uid):
            continue
        if obj["metadata"].get("deletionTimestamp"):
            continue
        api.delete(kind_of(obj), namespace, obj["metadata"]["name"])
        report.pruned.append(key)
    return report
