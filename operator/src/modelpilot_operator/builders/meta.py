"""Names, labels, selectors and owner references shared by every child object.

Every child is named from the ModelDeployment and, where it belongs to one version, the
version: ``<name>-<version>``. The API limits both parts (40 + 1 + 20 characters), so each
name stays a DNS-1035 label that a Service accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.v1alpha1 import API_VERSION, KIND, ModelDeployment

MANAGED_BY = "modelpilot"
LABEL_MODEL = "modelpilot.io/model"
LABEL_VERSION = "modelpilot.io/version"
# Annotation with a hash of what the operator last applied: a changed hash means the
# desired object changed (fields removed included), so it is applied again.
ANNOTATION_APPLIED = "modelpilot.io/applied-hash"
ANNOTATION_REVISION = "modelpilot.io/revision"

HTTP_PORT = 8080
GRPC_PORT = 8081
MODELS_DIR = "/mnt/models"
DEFAULT_IMAGE_REPOSITORY = "ghcr.io/modelpilot/runtime"
# The per-pod gauge of requests queued or running, from the runtime's metric contract.
INFLIGHT_METRIC = "modelpilot_inference_pending_requests"


@dataclass(frozen=True)
class BuildOptions:
    """What the builders need to know besides the ModelDeployment itself."""

    default_image: str = f"{DEFAULT_IMAGE_REPOSITORY}:latest"
    service_monitor: bool = False
    """The ServiceMonitor CRD (Prometheus operator) is installed."""


def md_name(md: ModelDeployment) -> str:
    return str(md.metadata["name"])


def md_namespace(md: ModelDeployment) -> str:
    return str(md.metadata.get("namespace") or "default")


def version_object_name(md: ModelDeployment, version: str) -> str:
    """Deployment, Service, HPA and PDB of one version."""
    return f"{md_name(md)}-{version}"


def model_labels(md: ModelDeployment) -> dict[str, str]:
    """Labels on every child of the ModelDeployment."""
    return {
        "app.kubernetes.io/name": md_name(md),
        "app.kubernetes.io/part-of": "modelpilot",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_MODEL: md_name(md),
    }


def version_labels(md: ModelDeployment, version: str) -> dict[str, str]:
    """Labels on the children (and pods) of one version."""
    return {
        **model_labels(md),
        "app.kubernetes.io/instance": version_object_name(md, version),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/version": version,
        LABEL_VERSION: version,
    }


def version_selector(md: ModelDeployment, version: str) -> dict[str, str]:
    """The pods of one version. Immutable in a Deployment: never add to it."""
    return {LABEL_MODEL: md_name(md), LABEL_VERSION: version}


def children_selector(md: ModelDeployment) -> str:
    """Label selector (string form) for every child the operator made for ``md``."""
    return f"app.kubernetes.io/managed-by={MANAGED_BY},{LABEL_MODEL}={md_name(md)}"


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    """Children are garbage-collected with their ModelDeployment."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": md_name(md),
        "uid": str(md.metadata.get("uid", "")),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    md: ModelDeployment,
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": md_namespace(md),
        "labels": dict(labels),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    meta["ownerReferences"] = [owner_reference(md)]
    return meta
