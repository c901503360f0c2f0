"""Kubernetes Events on a ModelDeployment: what the operator decided and why, for
``kubectl describe`` and ``kubectl get events``."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from .client import ApiError, KubeApi

log = logging.getLogger(__name__)

COMPONENT = "modelpilot"
MESSAGE_LIMIT = 1024


def post_event(
    api: KubeApi,
    involved: dict[str, Any],
    type_: Literal["Normal", "Warning"],
    reason: str,
    message: str,
) -> None:
    """Create one core/v1 Event about ``involved`` (best effort: a failure is logged)."""
    meta = involved.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:16]}",
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": os.environ.get("POD_NAME") or os.uname().nodename,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        api.create(event)
    except ApiError as err:
        log.warning("could not post event %s on %s: %s", reason, meta.get("name"), err)
