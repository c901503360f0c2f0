"""Valid ModelDeployments parse with their defaults; invalid ones fail with a clear message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelpilot_operator.api.v1alpha1 import (
    ModelDeployment,
    format_duration,
    parse_duration,
    version_revision,
)
from tests.api_cases import INVALID, VALID, Case, full, minimal


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_valid_examples_parse_and_round_trip(case: Case) -> None:
    md = ModelDeployment.model_validate(case.obj)
    again = ModelDeployment.model_validate(md.to_wire())
    assert again == md


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_examples_are_rejected_with_their_message(case: Case) -> None:
    assert case.pydantic_message is not None
    with pytest.raises(ValidationError) as err:
        ModelDeployment.model_validate(case.obj)
    assert case.pydantic_message in str(err.value)


def test_defaults_fill_a_minimal_object() -> None:
    spec = ModelDeployment.model_validate(minimal()).spec
    v1 = spec.version("v1")
    assert v1.model.format == "onnx"
    assert v1.runtime.execution_providers == ["cuda", "cpu"]
    assert v1.runtime.batching.max_batch_size == 8
    assert v1.runtime.batching.max_delay == "2ms"
    assert v1.runtime.cache.enabled is False
    assert v1.scaling.min_replicas == v1.scaling.max_replicas == 1
    assert spec.routing.router == "istio"
    assert spec.rollout is None


def test_rollout_defaults() -> None:
    obj = full()
    obj["spec"]["rollout"] = {"candidate": "v2"}
    rollout = ModelDeployment.model_validate(obj).spec.rollout
    assert rollout is not None
    assert rollout.strategy == "canary"
    assert [s.weight for s in rollout.steps] == [10, 25, 50]
    assert rollout.promotion == "auto"
    assert rollout.analysis.failure_limit == 2
    assert [c.builtin for c in rollout.analysis.checks] == ["errorRate", "latencyP99"]


def test_quantities_accept_numbers_and_keep_strings() -> None:
    spec = ModelDeployment.model_validate(full()).spec
    assert spec.version("v1").resources.cpu == "2"
    assert spec.version("v1").resources.memory == "4Gi"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2ms", 0.002), ("30s", 30), ("1m30s", 90), ("1.5h", 5400), ("1h2m3s", 3723)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 m", "-1s", "1d", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_revision_follows_the_version_spec() -> None:
    spec = ModelDeployment.model_validate(full()).spec
    v2 = spec.version("v2")
    changed = v2.model_copy(update={"resources": v2.resources.model_copy(update={"gpu": 1})})
    assert version_revision(v2) == version_revision(v2.model_copy(deep=True))
    assert version_revision(v2) != version_revision(changed)
    assert len(version_revision(v2)) == 10


def test_operator_folder_does_not_shadow_stdlib_operator() -> None:
    import operator

    assert operator.__file__ is not None
    assert "site-packages" not in operator.__file__
    assert "modelpilot" not in operator.__file__
    assert operator.add(2, 3) == 5
