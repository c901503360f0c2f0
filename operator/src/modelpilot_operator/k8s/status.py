"""Status writers besides the reconciler's: manual rollout decisions and the rollout engine.

A person's request is written through ``status`` (not the spec) so GitOps tools that own
the spec do not revert it. Every writer applies with a field manager of its own (see
:data:`.client.ROLLOUT_FIELD_MANAGER`).
"""

from __future__ import annotations

from typing import Any

from ..api.v1alpha1 import API_VERSION, KIND, Request
from .client import ROLLOUT_FIELD_MANAGER, KubeApi
from .kinds import MODEL_DEPLOYMENT

CLI_FIELD_MANAGER = "modelpilot-cli"


def rollout_status_holds(
    live: dict[str, Any], patch: dict[str, Any], keys: tuple[str, ...], conditions: tuple[str, ...]
) -> bool:
    """Whether ``live`` status already is what applying ``patch`` (the engine's fields
    ``keys`` and its condition types ``conditions``) would make it."""
    for key in keys:
        if key == "conditions":
            continue
        if key in patch:
            if live.get(key) != patch[key]:
                return False
        elif key in live:
            return False
    have = {c.get("type"): c for c in live.get("conditions") or [] if c.get("type") in conditions}
    want = {c.get("type"): c for c in patch.get("conditions") or []}
    return have == want


def write_rollout_status(
    api: KubeApi,
    meta: dict[str, Any],
    live: dict[str, Any],
    patch: dict[str, Any],
    keys: tuple[str, ...],
    conditions: tuple[str, ...],
) -> dict[str, Any] | None:
    """Apply the engine's status fields unless the live status already holds them; the
    object as written, or None when nothing was.

    The write carries the resourceVersion the engine decided on: if the object changed
    since, the API server answers 409 (:class:`~.client.ConflictError`) and the caller
    decides again on the newer object.
    """
    if rollout_status_holds(live, patch, keys, conditions):
        return None
    return api.apply_status(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "status": patch,
        },
        manager=ROLLOUT_FIELD_MANAGER,
        force=False,
    )


def read_model_deployment(api: KubeApi, namespace: str, name: str) -> dict[str, Any] | None:
    """The ModelDeployment as stored, or None."""
    return api.get(MODEL_DEPLOYMENT, namespace, name)


def write_request(api: KubeApi, namespace: str, name: str, request: Request) -> dict[str, Any]:
    """Set ``status.request``; the operator acts on it once (by its id)."""
    obj = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "status": {"request": request.to_wire()},
    }
    return api.apply_status(obj, manager=CLI_FIELD_MANAGER, force=False)
