"""Golden files: every child object as rendered, one YAML stream per case.

Set MODELPILOT_UPDATE_GOLDEN=1 to rewrite the files after an intended change, and review
the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from modelpilot_operator.builders import build_children, desired_traffic

from .cases import CASES, BuildCase

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MODELPILOT_UPDATE_GOLDEN") == "1"


def render(case: BuildCase) -> str:
    md = case.md()
    children = build_children(md, desired_traffic(md.spec, md.status), case.options())
    return yaml.safe_dump_all(children, sort_keys=False, width=100)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_children_match_golden(case: BuildCase) -> None:
    path = GOLDEN / f"{case.id}.yaml"
    text = render(case)
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with MODELPILOT_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs: rerun with MODELPILOT_UPDATE_GOLDEN=1"


def test_every_golden_file_has_a_case() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == {c.id for c in CASES}
