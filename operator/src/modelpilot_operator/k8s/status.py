"""Manual rollout decisions: a person's request written to the status subresource.

Written through ``status`` (not the spec) so GitOps tools that own the spec do not revert
them, and with a field manager of its own so the operator's status writes do not take the
field away.
"""

from __future__ import annotations

from typing import Any

from ..api.v1alpha1 import API_VERSION, KIND, Request
from .client import KubeApi
from .kinds import MODEL_DEPLOYMENT

CLI_FIELD_MANAGER = "modelpilot-cli"


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
    return api.apply_status(obj, manager=CLI_FIELD_MANAGER, force=True)
