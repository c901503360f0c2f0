"""Generate the ModelDeployment CRD from the pydantic models (the one source of the schema).

pydantic writes JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3 schema:
every ``$ref`` inlined, ``nullable`` instead of ``type: null``, no ``title``/``$defs``, no
``additionalProperties: false`` beside ``properties``, and boolean ``exclusiveMinimum``. This
module does that translation, adds defaults from default factories, and writes
``crds/modelpilot.io_modeldeployments.yaml``. ``--check`` regenerates and fails on any diff.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, NoDefault
from pydantic_core import core_schema

from .api.v1alpha1 import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from .api.v1alpha1.common import MAX_NAME_LENGTH, cel

CRD_FILENAME = f"{GROUP}_{PLURAL}.yaml"

# Rules that only the root object may carry: they read metadata.name.
ROOT_RULES = [
    cel(
        f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        f"metadata.name must be at most {MAX_NAME_LENGTH} characters: "
        "child objects append the version name",
    ),
]

_DROP_KEYS = {"title", "$defs", "examples"}


class _CrdSchemaGenerator(GenerateJsonSchema):
    """pydantic's generator, with defaults from default factories in wire form."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory: Callable[[], Any] | None = schema.get("default_factory")  # type: ignore[assignment]
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()
        return schema.get("default", NoDefault)

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, BaseModel):
            return dft.model_dump(by_alias=True, exclude_none=True, mode="json")
        if isinstance(dft, list) and dft and all(isinstance(x, BaseModel) for x in dft):
            return [x.model_dump(by_alias=True, exclude_none=True, mode="json") for x in dft]
        return super().encode_default(dft)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline refs and rewrite one node (recursively) into structural OpenAPI v3."""
    if isinstance(node, list):
        return [_resolve(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while True:
        ref = node.pop("$ref", None)
        if ref is not None:
            target = copy.deepcopy(defs[ref.rsplit("/", 1)[-1]])
            # Keys beside the ref (default, description) win over the referenced schema's.
            target.update(node)
            node = target
            continue
        any_of = node.get("anyOf")
        if isinstance(any_of, list) and {"type": "null"} in any_of:
            # Unset optionals are simply absent on the wire; an explicit null is not needed.
            node.pop("anyOf")
            if node.get("default", NoDefault) is None:
                node.pop("default")
            non_null = [s for s in any_of if s != {"type": "null"}]
            merged = dict(non_null[0]) if len(non_null) == 1 else {"anyOf": non_null}
            merged.update(node)
            node = merged
            continue
        break
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
            continue
        if key == "default":
            out[key] = value
            continue
        out[key] = _resolve(value, defs)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw: JsonSchemaValue = model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_CrdSchemaGenerator
    )
    defs = raw.get("$defs", {})
    resolved: dict[str, Any] = _resolve(raw, defs)
    return resolved


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition as a dict."""
    spec = openapi_schema(ModelDeploymentSpec)
    status = openapi_schema(ModelDeploymentStatus)
    root: dict[str, Any] = {
        "type": "object",
        "description": "A machine-learning model served in versions and rolled out by metrics.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": ROOT_RULES,
    }
    columns = [
        ("Stable", "string", ".status.stable", "Version serving when nothing rolls out"),
        ("Candidate", "string", ".status.candidate", "Version being rolled out"),
        ("Weight", "integer", ".status.candidateWeight", "Candidate's share of traffic (%)"),
        ("Phase", "string", ".status.phase", "Rollout phase"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelpilot"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["modelpilot"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p, **({"description": d} if d else {})}
                        for n, t, p, d in columns
                    ],
                }
            ],
        },
    }


def render_crd() -> str:
    """The CRD as the committed YAML text."""
    header = (
        "# Generated by `python -m modelpilot_operator.crdgen` from the pydantic models. "
        "Do not edit.\n"
    )
    body = yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)
    return header + body


def main(argv: list[str] | None = None) -> int:
    """Write the CRD into a folder, or check that the committed one is current."""
    parser = argparse.ArgumentParser(prog="python -m modelpilot_operator.crdgen")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="folder to write the CRD into")
    group.add_argument("--check", type=Path, help="folder whose CRD must match the models")
    args = parser.parse_args(argv)
    text = render_crd()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / CRD_FILENAME).write_text(text)
        print(f"wrote {args.out / CRD_FILENAME}")
        return 0
    path: Path = args.check / CRD_FILENAME
    if not path.exists() or path.read_text() != text:
        print(
            f"{path} is out of date with the API models; run `make crds` and commit it",
            file=sys.stderr,
        )
        return 1
    print(f"{path} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
