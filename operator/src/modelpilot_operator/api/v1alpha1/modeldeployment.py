"""The ModelDeployment object and helpers around it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, field_validator

from .common import API_VERSION, KIND, MAX_NAME_LENGTH, ApiModel
from .spec import ModelDeploymentSpec, ModelVersion
from .status import ModelDeploymentStatus


class ModelDeployment(ApiModel):
    """A model with its versions, which one is stable, and the rollout under way."""

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _name_fits(cls, value: dict[str, Any]) -> dict[str, Any]:
        name = value.get("name")
        if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
            raise ValueError(
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters: "
                "child objects append the version name"
            )
        return value


def version_revision(version: ModelVersion) -> str:
    """A short, stable hash of everything that defines a version's pods.

    Manual approvals name this hash, so an approval given for one build of a candidate
    does not promote a candidate that was changed after it.
    """
    canonical = json.dumps(version.to_wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]
