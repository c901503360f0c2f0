"""The rollout verbs: requests they build and write, and the status table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelpilot_operator.api.v1alpha1 import ModelDeploymentStatus
from modelpilot_operator.cli.main import build_parser
from modelpilot_operator.cli.rollout import ACTIONS, build_request, format_status
from modelpilot_operator.k8s.status import CLI_FIELD_MANAGER, write_request
from modelpilot_operator.rollout import Observations, reconcile
from tests.unit.rollout.harness import Sim, make_spec

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("verb", ["status", *ACTIONS])
def test_every_verb_parses(verb: str) -> None:
    args = build_parser().parse_args([verb, "fraud", "-n", "ml"])
    assert args.command == verb
    assert args.name == "fraud"
    assert args.namespace == "ml"


def test_promote_names_the_candidate_revision_in_status() -> None:
    status = ModelDeploymentStatus(candidate="v2", candidate_revision="abc123")
    req = build_request("promote", status, full=True, now=NOW, who="alice")
    assert req.revision == "abc123"
    assert req.full is True
    assert req.requested_at == "2025-01-01T00:00:00Z"
    assert build_request("abort", status).revision is None
    assert build_request("promote", status).id != build_request("promote", status).id


class FakeApi:
    def __init__(self) -> None:
        self.status_writes: list[tuple[dict[str, Any], str]] = []

    def apply_status(self, obj: dict[str, Any], *, manager: str, force: bool = True) -> Any:
        self.status_writes.append((obj, manager))
        return obj


def test_requests_go_through_the_status_subresource_with_their_own_manager() -> None:
    api = FakeApi()
    req = build_request("pause", ModelDeploymentStatus(), now=NOW)
    write_request(api, "ml", "fraud", req)  # type: ignore[arg-type]
    obj, manager = api.status_writes[0]
    assert manager == CLI_FIELD_MANAGER
    assert obj["metadata"] == {"name": "fraud", "namespace": "ml"}
    assert obj["status"] == {"request": req.to_wire()}
    assert "spec" not in obj


def test_a_written_promotion_releases_the_manual_gate() -> None:
    sim = Sim(make_spec(promotion="manual"))
    sim.until("AwaitingPromotion")
    req = build_request("promote", sim.status, now=sim.now)
    status = sim.status.model_copy(update={"request": req})
    d = reconcile(sim.spec, status, Observations(weights=sim.route, candidate_ready=True), sim.now)
    assert d.status.phase == "Promoting"


def test_status_table_shows_weights_step_and_verdicts() -> None:
    sim = Sim(make_spec())
    sim.tick()
    sim.run(90)
    obj = {
        "metadata": {"name": "fraud", "namespace": "ml"},
        "spec": sim.spec.to_wire(),
        "status": sim.status.to_wire(),
    }
    text = format_status(obj)
    assert "Phase:      Progressing" in text
    assert "step 2/3" in text
    assert "v2          candidate      25%      25%" in text
    assert "error-rate=pass" in text
    assert "Promoted    False" in text


def test_status_shows_the_planned_sample_size_per_step() -> None:
    from modelpilot_operator.api.v1alpha1 import AnalysisRecord, CheckResult

    def rec(step: int, have: int, needed: int) -> AnalysisRecord:
        check = CheckResult(
            name="error-rate",
            verdict="pass" if needed == 0 else "inconclusive",
            candidate_samples=have,
            planned_samples=2400,
            needed_samples=needed,
        )
        return AnalysisRecord(
            at="2025-01-01T00:01:00Z", step=step, window="1m", verdict=check.verdict, checks=[check]
        )

    status = ModelDeploymentStatus(
        phase="Progressing",
        candidate="v2",
        candidate_revision="abc",
        step=1,
        analysis=[rec(0, 600, 0), rec(1, 900, 1500)],
    )
    obj = {"metadata": {"name": "fraud", "namespace": "ml"}, "status": status.to_wire()}
    text = format_status(obj)
    assert "PLANNED" in text
    lines = [line for line in text.splitlines() if "error-rate" in line and "2400" in line]
    assert len(lines) == 2
    assert lines[0].split()[:4] == ["1", "error-rate", "600", "2400"]
    assert lines[0].endswith("enough")
    assert lines[1].endswith("1500 more")
