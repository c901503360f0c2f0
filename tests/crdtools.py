"""What the API server does with a CRD schema, done offline: defaulting and CEL rules.

Used to check that the generated CRD and the pydantic models agree. The CEL evaluator is
cel-python with the one Kubernetes list function the CRD uses (``isSorted``).
"""

from __future__ import annotations

import copy
import itertools
from functools import cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

from modelpilot_operator.crdgen import build_crd


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill defaults the way the API server does: depth first, after the parent's default."""
    obj = copy.deepcopy(obj)
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = apply_defaults(sub, obj[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in obj:
                obj[key] = apply_defaults(extra, obj[key])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        obj = [apply_defaults(schema["items"], x) for x in obj]
    return obj


def _is_sorted(values: celtypes.ListType) -> celtypes.BoolType:
    items: list[Any] = list(values)
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(items)))


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions={"isSorted": _is_sorted})


def cel_violations(schema: dict[str, Any], obj: Any) -> list[str]:
    """Messages of every x-kubernetes-validations rule the (defaulted) object breaks."""
    found: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        result = _program(rule["rule"]).evaluate({"self": json_to_cel(obj)})
        if result is not celtypes.BoolType(True) and result != celtypes.BoolType(True):
            found.append(rule["message"])
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                found += cel_violations(sub, obj[key])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for x in obj:
            found += cel_violations(schema["items"], x)
    return found
