"""A driver for the rollout engine: one tick at a time, in virtual time, with a fake route.

The route applies the decided weights when ``tick`` is told to (as the operator would after
patching status), so the next tick reads them back. Every tick round-trips the status through
its wire form, as the API server stores it, so each tick is also a restart.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from modelpilot_operator.api.v1alpha1 import (
    AnalysisRecord,
    CheckResult,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Request,
    version_revision,
)
from modelpilot_operator.api.v1alpha1.status import Action, Verdict
from modelpilot_operator.rollout import (
    Decision,
    Event,
    Observations,
    analysis_due,
    format_time,
    reconcile,
)

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
_ids = itertools.count(1)


def make_spec(**rollout: Any) -> ModelDeploymentSpec:
    """A two-version spec; ``rollout`` overrides fields of spec.rollout (None: no rollout).

    The analysis warm-up is off unless ``analysis`` sets it, so the scenarios count intervals
    from the step's start; ``test_warmup.py`` covers the warm-up.
    """
    if rollout.get("candidate", "") is not None:
        rollout = {**rollout, "analysis": {"warmup": "0s", **rollout.get("analysis", {})}}
    obj: dict[str, Any] = {
        "apiVersion": "modelpilot.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "ml"},
        "spec": {
            "versions": [
                {"name": "v1", "model": {"storageUri": "s3://m/1/"}},
                {"name": "v2", "model": {"storageUri": "s3://m/2/"}},
                {"name": "v3", "model": {"storageUri": "s3://m/3/"}},
            ],
            "stable": "v1",
            "rollout": {"candidate": "v2", **rollout},
        },
    }
    if rollout.get("candidate", "") is None:
        del obj["spec"]["rollout"]
    return ModelDeployment.model_validate(obj).spec


def revision(spec: ModelDeploymentSpec, name: str = "v2") -> str:
    return version_revision(spec.version(name))


def record(at: datetime, step: int | None, verdict: Verdict) -> AnalysisRecord:
    return AnalysisRecord(
        at=format_time(at),
        step=step,
        window="1m",
        verdict=verdict,
        checks=[CheckResult(name="error-rate", verdict=verdict)],
    )


@dataclass
class Sim:
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = field(default_factory=ModelDeploymentStatus)
    now: datetime = T0
    route: dict[str, int] | None = None
    mirror: int = 0
    candidate_ready: bool = True
    apply_route: bool = True
    mirror_blocked: str | None = None
    events: list[Event] = field(default_factory=list)
    last: Decision | None = None

    def tick(
        self,
        verdict: Verdict | None = "pass",
        advance: float = 0.0,
        request: Request | None = None,
    ) -> Decision:
        """Move the clock, answer a due analysis with ``verdict``, reconcile, apply."""
        self.now += timedelta(seconds=advance)
        status = ModelDeploymentStatus.model_validate(self.status.to_wire())  # a restart
        if request is not None:
            status.request = request
        rec = None
        window = analysis_due(self.spec, status, self.now)
        if window is not None and verdict is not None:
            rec = record(window.end, window.step, verdict)
        obs = Observations(
            weights=self.route,
            mirror_percent=self.mirror,
            candidate_ready=self.candidate_ready,
            analysis=rec,
            generation=1,
            mirror_blocked=self.mirror_blocked,
        )
        decision = reconcile(self.spec, status, obs, self.now)
        self.status = decision.status
        self.events.extend(decision.events)
        if self.apply_route:
            self.route = dict(decision.weights)
            self.mirror = decision.mirror_percent
        self.last = decision
        return decision

    def run(self, seconds: float, every: float = 10.0, verdict: Verdict | None = "pass") -> None:
        """Tick every ``every`` seconds for ``seconds``."""
        for _ in range(round(seconds / every)):
            self.tick(verdict, advance=every)

    def until(
        self, phase: str, verdict: Verdict | None = "pass", limit: int = 500, every: float = 10.0
    ) -> int:
        """Tick until the phase is reached; the number of ticks it took."""
        for n in range(limit):
            if self.status.phase == phase:
                return n
            self.tick(verdict, advance=every if n else 0.0)
        raise AssertionError(
            f"phase {phase} not reached; stuck in {self.status.phase}: {self.status.message}"
        )

    def request(self, action: Action, revision: str | None = None, full: bool = False) -> Decision:
        req = Request(
            action=action,
            revision=revision,
            full=full,
            id=f"r{next(_ids)}",
            requested_at=format_time(self.now),
            requested_by="alice",
        )
        return self.tick(None, request=req)

    def phase(self) -> str:
        """The current phase (a plain str, so that checks after a tick are not narrowed)."""
        return self.status.phase

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def condition(self, type_: str) -> str | None:
        for c in self.status.conditions:
            if c.type == type_:
                return c.status
        return None
