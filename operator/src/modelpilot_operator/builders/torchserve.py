"""What a ``format: torchserve`` version adds to its pods.

The runtime serves a ``.mar`` when the model's ``config.json`` (beside its version
directories) says ``backend: torchserve`` and declares the tensors, which a ``.mar`` does
not carry. The operator renders that file from ``runtime.torchserve`` into a pod annotation;
a downward-API volume shows it as a file, and an init container copies it next to the
fetched version, so the root filesystem stays read-only and nothing else (no ConfigMap, no
extra RBAC) is needed. Batching stays on the runtime's command line: the runtime registers
the model with TorchServe using those settings.
"""

from __future__ import annotations

import json
from typing import Any

from ..api.v1alpha1 import ModelDeployment, ModelVersion, parse_duration
from .meta import MODELS_DIR, md_name

ANNOTATION_MODEL_CONFIG = "modelpilot.io/model-config"
CONFIG_VOLUME = "model-config"
CONFIG_MOUNT = "/etc/modelpilot/model-config"
CONFIG_FILE = "config.json"


def is_torchserve(version: ModelVersion) -> bool:
    return version.model.format == "torchserve"


def model_config(version: ModelVersion) -> dict[str, Any]:
    """The runtime's per-model config (``modelpilot_runtime.config.ModelConfig``)."""
    ts = version.runtime.torchserve
    if ts is None:
        raise ValueError(f"version {version.name}: format torchserve without runtime.torchserve")

    def tensors(items: list[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "backend": "torchserve",
        "torchserve": {
            "inputs": tensors(ts.inputs),
            "outputs": tensors(ts.outputs),
            "request_format": ts.request_format,
            "workers": ts.workers,
            "response_timeout_s": max(1, round(parse_duration(ts.response_timeout))),
        },
    }


def model_config_text(version: ModelVersion) -> str:
    return json.dumps(model_config(version), sort_keys=True, separators=(",", ":"))


def config_volume() -> dict[str, Any]:
    """The rendered config as a file, from the pod's own annotation."""
    return {
        "name": CONFIG_VOLUME,
        "downwardAPI": {
            "items": [
                {
                    "path": CONFIG_FILE,
                    "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_MODEL_CONFIG}']"},
                }
            ]
        },
    }


def config_init_container(
    md: ModelDeployment, image: str, security: dict[str, Any]
) -> dict[str, Any]:
    """Copies the config beside the version directories, where the runtime reads it."""
    return {
        "name": "model-config",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cp"],
        "args": [f"{CONFIG_MOUNT}/{CONFIG_FILE}", f"{MODELS_DIR}/{md_name(md)}/{CONFIG_FILE}"],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
        "securityContext": security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR},
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT, "readOnly": True},
        ],
    }
