"""The generated CRD: structural, current, and in agreement with the pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis_jsonschema import from_schema
from pydantic import ValidationError

from modelpilot_operator.api.v1alpha1 import ModelDeployment, ModelDeploymentSpec
from modelpilot_operator.crdgen import CRD_FILENAME, main, render_crd
from tests.api_cases import INVALID, VALID, Case
from tests.crdtools import apply_defaults, cel_violations, root_schema

ROOT = Path(__file__).resolve().parents[3]


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.items():
            out += _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, f"{path}[{i}]")
    return out


def test_committed_crd_is_current() -> None:
    assert (ROOT / "crds" / CRD_FILENAME).read_text() == render_crd()


def test_check_mode_fails_on_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / CRD_FILENAME).write_text(render_crd().replace("mdep", "mdx"))
    assert main(["--check", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0


def test_schema_is_structural() -> None:
    for path, node in _walk(root_schema()):
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert "$defs" not in node, path
        assert node.get("type") != "null", path
        assert node.get("additionalProperties") is not False, path
        if "properties" in node:
            assert node.get("type") == "object", path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
        if isinstance(node.get("exclusiveMinimum"), int | float) and not isinstance(
            node.get("exclusiveMinimum"), bool
        ):
            pytest.fail(f"numeric exclusiveMinimum at {path}")


def test_every_list_and_string_under_a_rule_is_bounded() -> None:
    # The API server refuses CEL rules whose estimated cost is unbounded.
    for path, node in _walk(root_schema()["properties"]["spec"]):
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "integer" and ".anyOf" not in path:
            assert "minimum" in node, path
            assert "maximum" in node, path


def test_subresources_and_columns() -> None:
    version = yaml.safe_load(render_crd())["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Stable", "Candidate", "Weight", "Phase", "Age"]


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_crd_defaults_match_model_defaults(case: Case) -> None:
    defaulted = apply_defaults(root_schema(), case.obj)
    assert cel_violations(root_schema(), defaulted) == []
    from_crd = ModelDeployment.model_validate(defaulted)
    from_model = ModelDeployment.model_validate(case.obj)
    assert from_crd == from_model
    # Wire form of the model is exactly what the API server would store.
    assert (
        from_model.to_wire()["spec"] == ModelDeployment.model_validate(defaulted).to_wire()["spec"]
    )


@pytest.mark.parametrize(
    "case", [c for c in INVALID if c.api_message and "must" in c.api_message], ids=lambda c: c.id
)
def test_cel_rules_reject_with_the_same_message(case: Case) -> None:
    assert case.api_message is not None
    defaulted = apply_defaults(root_schema(), case.obj)
    violations = cel_violations(root_schema(), defaulted)
    assert any(case.api_message in v for v in violations), violations


_SPEC_SCHEMA = root_schema()["properties"]["spec"]


def _closed(node: Any) -> Any:
    """The schema as the API server applies it: unknown fields are pruned, so never sent."""
    if isinstance(node, list):
        return [_closed(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if "properties" in out:
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string"):
        # Quantities: bounded here only so that the CEL evaluator's int64 does not overflow.
        out["anyOf"] = [{"type": "integer", "minimum": 0, "maximum": 2**40}, {"type": "string"}]
    return out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(obj=from_schema(_closed(_SPEC_SCHEMA)))
def test_schema_valid_objects_parse_exactly_when_cel_accepts(obj: Any) -> None:
    """Anything the schema admits (types, bounds, patterns) pydantic parses unless a
    cross-field rule breaks, and pydantic and CEL then agree on whether it does."""
    defaulted = apply_defaults(_SPEC_SCHEMA, obj)
    violations = cel_violations(_SPEC_SCHEMA, defaulted)
    try:
        spec = ModelDeploymentSpec.model_validate(obj)
    except ValidationError as err:
        text = str(err)
        only_operator_checks = "PromQL" in text or "query template" in text
        duplicates = "must be unique" in text or "must not repeat" in text
        assert violations or only_operator_checks or duplicates, text
        return
    assert violations == []
    assert ModelDeploymentSpec.model_validate(spec.to_wire()) == spec
