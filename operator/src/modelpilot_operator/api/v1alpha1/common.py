"""Shared building blocks of the v1alpha1 API: the base model, durations, quantities, names."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "modelpilot.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdep", "md"]
# Child names are "<name>-<version>" (version <= 20) and must stay DNS-1035 labels (<= 63).
MAX_NAME_LENGTH = 40

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# A DNS-1035 label: what Service names need, so every child name stays valid.
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields are an error."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def parse_duration(value: str) -> float:
    """Seconds in a duration such as ``2ms``, ``30s``, ``1m30s`` or ``1.5h``."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: use a number with ms, s, m or h, e.g. 30s")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))


def format_duration(seconds: float) -> str:
    """The shortest duration string for a number of seconds (inverse of parse_duration)."""
    if seconds < 1 or seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{sec}s" if sec else ""]
    return "".join(parts) or "0s"


def _check_duration(value: Any) -> Any:
    if isinstance(value, str):
        parse_duration(value)
    return value


# The pattern goes into the CRD; the validator wrapped around it gives the readable message.
Duration = Annotated[
    str,
    StringConstraints(pattern=DURATION_PATTERN, max_length=32),
    BeforeValidator(_check_duration),
]

Name = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=20)]
LabelValue = Annotated[str, StringConstraints(max_length=63)]
ShortText = Annotated[str, StringConstraints(max_length=253)]
Message = Annotated[str, StringConstraints(max_length=4096)]


def _quantity_to_str(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a quantity is a number or a string such as 500m or 4Gi")
    if isinstance(value, int | float):
        return str(value)
    return value


# Kubernetes quantities are written both as numbers (cpu: 2) and strings (memory: 4Gi).
Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    StringConstraints(pattern=QUANTITY_PATTERN, max_length=32),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One CEL validation rule as the API server reads it."""
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out
