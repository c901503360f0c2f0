"""The rollout state machine: ``reconcile(spec, status, observations, now) -> Decision``.

Pure: no clock, no I/O, no memory between calls. Everything it needs to continue lives in
``status`` (timestamps included) and in what the caller observed (the weights read back from
the route, readiness, the analysis record of the interval that just ended). Calling it again
with the same inputs gives the same decision, so an operator restarted at any moment carries on.

See the package docstring for the phases and the rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ..api.v1alpha1 import (
    AnalysisRecord,
    Condition,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Request,
    Rollout,
    parse_duration,
    version_revision,
)
from ..api.v1alpha1.status import ConditionStatus, ConditionType, Phase
from .clock import format_time, parse_time, seconds_between

EventType = Literal["Normal", "Warning"]

ACTIVE_PHASES: frozenset[Phase] = frozenset(
    {"Progressing", "Paused", "AwaitingPromotion", "Promoting"}
)
ENDED_PHASES: frozenset[Phase] = frozenset({"Promoted", "RolledBack", "Failed"})
HISTORY_LIMIT = 20
# How often the caller should come back while a rollout is active (seconds).
ACTIVE_REQUEUE = 5.0
IDLE_REQUEUE = 60.0


@dataclass(frozen=True)
class Observations:
    """What the caller saw in the cluster this tick.

    ``weights`` and ``mirror_percent`` are read back from the live route (``None``: no route
    or it could not be read). ``analysis`` is the record of the interval that
    :func:`analysis_due` asked for, or ``None`` when none was due or run.
    ``mirror_blocked`` says why the route cannot carry a mirror (its Gateway's
    implementation does not support it): a shadow step then neither starts nor passes.
    """

    weights: Mapping[str, int] | None = None
    mirror_percent: int | None = 0
    stable_ready: bool = True
    candidate_ready: bool = False
    analysis: AnalysisRecord | None = None
    generation: int | None = None
    mirror_blocked: str | None = None


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event the caller should emit on the ModelDeployment."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class AnalysisWindow:
    """The interval to analyse now: ``[start, end]``, with evidence accumulated ``since``."""

    start: datetime
    end: datetime
    since: datetime
    step: int | None

    @property
    def seconds(self) -> float:
        """Length of the interval in seconds."""
        return (self.end - self.start).total_seconds()

    @property
    def cumulative_seconds(self) -> float:
        """Length of the evidence window (since the rollout started) in seconds."""
        return (self.end - self.since).total_seconds()


@dataclass(frozen=True)
class Decision:
    """The next status, the route to apply and the Events to emit."""

    status: ModelDeploymentStatus
    weights: dict[str, int]
    mirror_percent: int
    events: tuple[Event, ...] = ()
    requeue_after: float = ACTIVE_REQUEUE


@dataclass
class _Tick:
    spec: ModelDeploymentSpec
    st: ModelDeploymentStatus
    obs: Observations
    now: datetime
    events: list[Event] = field(default_factory=list)

    def emit(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def condition(
        self, type_: ConditionType, status: ConditionStatus, reason: str, msg: str
    ) -> None:
        set_condition(self.st, type_, status, reason, msg, self.now, generation=self.obs.generation)


def set_condition(
    status: ModelDeploymentStatus,
    type_: ConditionType,
    value: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> None:
    """Set one condition in place; its transition time moves only when its status changes."""
    for i, cond in enumerate(status.conditions):
        if cond.type == type_:
            moved = cond.status != value
            status.conditions[i] = Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=format_time(now) if moved else cond.last_transition_time,
                observed_generation=generation
                if generation is not None
                else cond.observed_generation,
            )
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=format_time(now),
            observed_generation=generation,
        )
    )


def interval_seconds(rollout: Rollout) -> float:
    """The analysis interval in seconds."""
    return parse_duration(rollout.analysis.interval)


def step_count(rollout: Rollout) -> int:
    """Steps of the rollout: the canary's step list, one step for the other strategies."""
    return len(rollout.steps) if rollout.strategy == "canary" else 1


def required_passes(rollout: Rollout, step: int) -> int:
    """Passing intervals a step needs: its pause in whole intervals (at least one) for a
    canary, ``iterations`` for abTest, shadow and blueGreen."""
    if rollout.strategy != "canary":
        return rollout.iterations
    pause = rollout.steps[step].pause
    if pause is None:
        return 1
    return max(1, math.floor(parse_duration(pause) / interval_seconds(rollout) + 1e-9))


def step_hold_seconds(rollout: Rollout, step: int) -> float:
    """Least time a step is held once its weights are on the route."""
    if rollout.strategy != "canary":
        return 0.0
    pause = rollout.steps[step].pause
    return parse_duration(pause) if pause is not None else interval_seconds(rollout)


def intended_route(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, candidate_ready: bool = True
) -> tuple[dict[str, int], int]:
    """The weights and mirror percentage the route should carry for this status.

    The weights always sum to 100. Before the first step has started, a candidate that is
    not ready gets no traffic.
    """
    ro = spec.rollout
    phase = status.phase
    candidate = status.candidate
    stable = status.stable or spec.stable
    if candidate is None or phase in ("Pending", "Stable"):
        return {stable: 100}, 0
    if phase in ("RolledBack", "Failed"):
        return {stable: 100, candidate: 0}, 0
    if phase in ("Promoting", "Promoted"):
        previous = spec.stable if spec.stable != candidate else stable
        weights = {candidate: 100} if previous == candidate else {previous: 0, candidate: 100}
        return weights, 0
    # Progressing, Paused, AwaitingPromotion.
    if ro is None:
        return {stable: 100}, 0
    if not candidate_ready and not status.step and status.step_started_at is None:
        return {stable: 100, candidate: 0}, 0
    if ro.strategy == "canary":
        step = min(status.step or 0, len(ro.steps) - 1)
        w = ro.steps[step].weight
        return {stable: 100 - w, candidate: w}, 0
    if ro.strategy == "shadow":
        return {stable: 100, candidate: 0}, ro.mirror_percent
    # abTest (matches go to the candidate, the rest to stable) and blueGreen (preview).
    return {stable: 100, candidate: 0}, 0


def route_matches(
    intended: Mapping[str, int],
    mirror: int,
    weights: Mapping[str, int] | None,
    read_mirror: int | None,
) -> bool:
    """Whether the route read back carries the intended weights (zero entries ignored)."""
    if weights is None:
        return False
    want = {k: v for k, v in intended.items() if v}
    have = {k: v for k, v in weights.items() if v}
    return want == have and (read_mirror or 0) == mirror


def analysis_due(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime
) -> AnalysisWindow | None:
    """The interval to analyse now, or ``None`` when no analysis is due.

    Analysis runs only once the current step's weights are on the route; each interval
    starts where the previous one ended (or at the step's start), so none overlap.
    """
    ro = spec.rollout
    if (
        ro is None
        or status.phase not in ("Progressing", "AwaitingPromotion")
        or status.paused
        or status.step_started_at is None
        or status.rollout_started_at is None
    ):
        return None
    if _warming_up(ro, status):  # nothing is judged yet
        return None
    start = parse_time(status.step_started_at)
    if status.last_analysis_at is not None:
        start = max(start, parse_time(status.last_analysis_at))
    if (now - start).total_seconds() < interval_seconds(ro):
        return None
    return AnalysisWindow(
        start=start, end=now, since=parse_time(status.rollout_started_at), step=status.step
    )


def reconcile(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observations: Observations,
    now: datetime,
) -> Decision:
    """Decide the next status and route from the current status, what was seen, and the time."""
    tick = _Tick(spec, status.model_copy(deep=True), observations, now)
    st = tick.st
    if observations.weights is not None:
        st.weights = dict(observations.weights)
    st.candidate_weight = st.weights.get(st.candidate, 0) if st.candidate else 0

    if spec.rollout is None:
        _no_rollout(tick)
    else:
        _track_candidate(tick, spec.rollout)
        _handle_request(tick)
        _advance(tick, spec.rollout)

    weights, mirror = intended_route(spec, st, observations.candidate_ready)
    st.desired_weights = weights
    st.mirror_percent = mirror
    if observations.generation is not None:
        st.observed_generation = observations.generation
    requeue = ACTIVE_REQUEUE if st.phase in ACTIVE_PHASES else IDLE_REQUEUE
    return Decision(st, weights, mirror, tuple(tick.events), requeue)


# --- phases ----------------------------------------------------------------------------


def _no_rollout(tick: _Tick) -> None:
    st, spec = tick.st, tick.spec
    if st.phase in ACTIVE_PHASES:
        tick.emit(
            "Warning",
            "RolloutRemoved",
            f"spec.rollout was removed during the rollout of {st.candidate}: "
            f"all traffic back to {spec.stable}",
        )
    _handle_request(tick)
    if st.phase != "Stable" or st.stable != spec.stable:
        tick.emit("Normal", "Stable", f"{spec.stable} serves all traffic")
    st.phase = "Stable"
    st.stable = spec.stable
    st.candidate = None
    st.candidate_revision = None
    st.candidate_weight = 0
    st.step = None
    st.step_started_at = None
    st.rollout_started_at = None
    st.last_analysis_at = None
    st.passed_intervals = 0
    st.failed_intervals = 0
    st.inconclusive_since = None
    st.paused = False
    st.message = f"{spec.stable} serves all traffic"
    tick.condition("Progressing", "False", "NoRollout", "no rollout in the spec")


def _track_candidate(tick: _Tick, ro: Rollout) -> None:
    """Start a rollout for a new candidate revision (or a new stable while one is active)."""
    st, spec = tick.st, tick.spec
    revision = version_revision(spec.version(ro.candidate))
    same = st.candidate == ro.candidate and st.candidate_revision == revision
    if same and st.phase in ENDED_PHASES:
        return
    if same and st.phase in ACTIVE_PHASES and st.stable == spec.stable:
        return
    if st.phase in ACTIVE_PHASES:
        tick.emit(
            "Normal",
            "RolloutRestarted",
            f"the spec changed during the rollout of {st.candidate} "
            f"(revision {st.candidate_revision}): starting over with {ro.candidate} "
            f"(revision {revision}) against {spec.stable}",
        )
    _start(tick, ro, revision)


def _start(tick: _Tick, ro: Rollout, revision: str) -> None:
    st, spec = tick.st, tick.spec
    st.phase = "Progressing"
    st.stable = spec.stable
    st.candidate = ro.candidate
    st.candidate_revision = revision
    st.step = 0
    st.step_started_at = None
    st.rollout_started_at = format_time(tick.now)
    st.last_analysis_at = None
    st.passed_intervals = 0
    st.failed_intervals = 0
    st.inconclusive_since = None
    st.paused = False
    st.analysis = []
    st.message = f"starting the {ro.strategy} rollout of {ro.candidate}"
    tick.emit(
        "Normal",
        "RolloutStarted",
        f"{ro.strategy} rollout of {ro.candidate} (revision {revision}) against {spec.stable}",
    )
    tick.condition("Progressing", "True", "RolloutStarted", st.message)
    tick.condition("Promoted", "False", "RolloutStarted", f"{ro.candidate} is being tried")
    tick.condition("RolledBack", "False", "RolloutStarted", f"{ro.candidate} is being tried")


def _handle_request(tick: _Tick) -> None:
    st = tick.st
    req = st.request
    if req is None or req.id == st.handled_request:
        return
    st.handled_request = req.id
    ro = tick.spec.rollout
    who = f" by {req.requested_by}" if req.requested_by else ""
    if req.action == "promote":
        _promote_request(tick, req, who)
    elif req.action in ("abort", "rollback"):
        undo = st.phase in ACTIVE_PHASES or (
            req.action == "rollback"
            and st.phase == "Promoted"
            and st.candidate is not None
            and tick.spec.stable != st.candidate
        )
        if not undo:
            _ignore(tick, req, f"nothing to {req.action} in phase {st.phase}")
            return
        reason = "Aborted" if req.action == "abort" else "RollbackRequested"
        _roll_back(tick, "RolledBack", reason, f"{req.action} requested{who}")
    elif req.action == "retry":
        if ro is None or st.phase not in ("RolledBack", "Failed"):
            _ignore(tick, req, f"retry applies after a rollback, not in phase {st.phase}")
            return
        tick.emit("Normal", "RolloutRetried", f"retry requested{who}")
        _start(tick, ro, version_revision(tick.spec.version(ro.candidate)))
    elif req.action == "pause":
        if st.phase not in ("Progressing", "AwaitingPromotion") or st.paused:
            _ignore(tick, req, f"cannot pause in phase {st.phase}")
            return
        st.paused = True
        st.phase = "Paused"
        st.message = f"paused{who}; the weights stay as they are"
        tick.emit("Normal", "Paused", st.message)
    elif req.action == "resume":
        if not st.paused:
            _ignore(tick, req, "the rollout is not paused")
            return
        _resume(tick)
        tick.emit("Normal", "Resumed", f"resumed{who}")


def _resume(tick: _Tick) -> None:
    st = tick.st
    st.paused = False
    st.phase = "Progressing"
    # The next analysis interval starts now: time spent paused is never analysed.
    if st.step_started_at is not None:
        st.last_analysis_at = format_time(tick.now)
    st.inconclusive_since = None
    st.message = "resumed"


def _promote_request(tick: _Tick, req: Request, who: str) -> None:
    st, ro = tick.st, tick.spec.rollout
    if ro is None or st.phase not in ("Progressing", "Paused", "AwaitingPromotion"):
        _ignore(tick, req, f"nothing to promote in phase {st.phase}")
        return
    if req.revision != st.candidate_revision:
        tick.emit(
            "Warning",
            "ApprovalRevisionMismatch",
            f"promotion{who} names revision {req.revision or '(none)'}, but the candidate "
            f"{st.candidate} is revision {st.candidate_revision}: ignored",
        )
        return
    if st.paused:
        _resume(tick)
    last = (st.step or 0) >= step_count(ro) - 1
    if req.full or st.phase == "AwaitingPromotion" or last:
        _begin_promotion(tick, f"promotion approved{who} for revision {req.revision}")
        return
    tick.emit("Normal", "StepSkipped", f"step {(st.step or 0) + 1} skipped{who}")
    _next_step(tick, ro)


def _ignore(tick: _Tick, req: Request, why: str) -> None:
    tick.emit("Warning", "RequestIgnored", f"{req.action} request {req.id} ignored: {why}")


def _advance(tick: _Tick, ro: Rollout) -> None:
    st = tick.st
    if st.phase == "Promoting":
        _finish_promotion(tick)
        return
    if st.phase not in ("Progressing", "AwaitingPromotion"):
        return
    n_steps = step_count(ro)
    if (st.step or 0) >= n_steps:
        st.step = n_steps - 1
    step = st.step or 0
    weights, mirror = intended_route(tick.spec, st, tick.obs.candidate_ready)

    if st.step_started_at is None:
        if not tick.obs.candidate_ready:
            st.message = f"waiting for {st.candidate} to be ready"
            return
        if not route_matches(weights, mirror, tick.obs.weights, tick.obs.mirror_percent):
            st.message = f"waiting for the route to carry {_describe(weights, mirror)}"
            if mirror and tick.obs.mirror_blocked:
                st.message += f"; {tick.obs.mirror_blocked}"
            return
        st.step_started_at = format_time(tick.now)
        st.passed_intervals = 0
        st.inconclusive_since = None
        st.message = f"step {step + 1}/{n_steps}: {_describe(weights, mirror)}"
        tick.emit("Normal", "StepStarted", st.message)
        return

    if _warming_up(ro, st) and not _warmed_up(tick, ro):
        return
    _account(tick, ro)
    if st.phase != "Progressing" or st.step_started_at is None:
        return
    _check_inconclusive_deadline(tick, ro)
    if st.phase != "Progressing":
        return
    held = seconds_between(st.step_started_at, tick.now) >= step_hold_seconds(ro, step)
    needed = required_passes(ro, step)
    # Intervals that passed without the mirror on the route judged no mirrored traffic.
    blocked = tick.obs.mirror_blocked if mirror else None
    if held and st.passed_intervals >= needed and tick.obs.candidate_ready and not blocked:
        tick.emit(
            "Normal",
            "StepPassed",
            f"step {step + 1}/{n_steps} passed {st.passed_intervals} of {needed} "
            f"required intervals",
        )
        if step + 1 < n_steps:
            _next_step(tick, ro)
        elif ro.promotion == "manual":
            st.phase = "AwaitingPromotion"
            st.message = (
                f"waiting for approval: modelpilot promote <name> "
                f"(candidate {st.candidate}, revision {st.candidate_revision})"
            )
            tick.emit("Normal", "AwaitingPromotion", st.message)
            tick.condition("Progressing", "True", "AwaitingPromotion", st.message)
        else:
            _begin_promotion(tick, f"all {n_steps} step(s) passed")
    else:
        st.message = (
            f"step {step + 1}/{n_steps}: {_describe(weights, mirror)}; "
            f"{st.passed_intervals}/{needed} passing intervals, "
            f"{st.failed_intervals}/{ro.analysis.failure_limit} failures tolerated"
        )
        waiting = _waiting_for_evidence(st)
        if waiting:
            deadline = parse_duration(ro.analysis.inconclusive_deadline)
            left = deadline - seconds_between(
                st.inconclusive_since or format_time(tick.now), tick.now
            )
            st.message += f"; {waiting} (inconclusiveDeadline in {max(0.0, left):.0f}s)"
        if blocked:
            st.message += f"; held: {blocked}"


def _warming_up(ro: Rollout, status: ModelDeploymentStatus) -> bool:
    """Whether the first step is still in its warm-up (no interval analysed yet)."""
    return not status.step and status.last_analysis_at is None and ro.analysis.warmup_seconds() > 0


def _warmed_up(tick: _Tick, ro: Rollout) -> bool:
    """Hold the first analysis until the candidate has served ``analysis.warmup``.

    A cold process (caches, lazy initialisation, JIT) is slow at first; judging it then
    fails a good candidate. The warm-up is not analysed and not part of the evidence: the
    first interval and the evidence window (``status.rolloutStartedAt``, moved to the end of
    the warm-up) start when it ends.
    """
    st = tick.st
    assert st.step_started_at is not None
    warmup = ro.analysis.warmup_seconds()
    served = seconds_between(st.step_started_at, tick.now)
    if served < warmup:
        st.message = (
            f"step {(st.step or 0) + 1}/{step_count(ro)}: warming up {st.candidate} "
            f"({served:.0f}s of {warmup:.0f}s, not analysed)"
        )
        return False
    st.rollout_started_at = format_time(tick.now)
    st.last_analysis_at = st.rollout_started_at
    tick.emit("Normal", "WarmedUp", f"warm-up of {warmup:.0f}s over: analysis starts")
    return True


def _waiting_for_evidence(st: ModelDeploymentStatus) -> str | None:
    """The hold of a tolerance check whose last interval lacked the evidence, if any."""
    if not st.analysis or st.analysis[-1].step != st.step:
        return None
    last = st.analysis[-1]
    if last.verdict != "inconclusive":
        return None
    for c in last.checks:
        if c.verdict == "inconclusive" and c.message.startswith("waiting for evidence"):
            if c.needed_samples is not None:
                return (
                    f"waiting for evidence ({c.name}): {c.needed_samples} more candidate "
                    f"requests needed at this rate"
                )
            return f"waiting for evidence ({c.name}): {c.message.split(';')[0]}"
    return None


def _account(tick: _Tick, ro: Rollout) -> None:
    """Take in the analysis record, if it is the one that was due."""
    st, rec = tick.st, tick.obs.analysis
    if rec is None or st.step_started_at is None or rec.step != st.step:
        return
    start = parse_time(st.step_started_at)
    if st.last_analysis_at is not None:
        start = max(start, parse_time(st.last_analysis_at))
    at = parse_time(rec.at)
    if at > tick.now or (at - start).total_seconds() < interval_seconds(ro) - 1.0:
        return
    st.analysis = [*st.analysis, rec][-HISTORY_LIMIT:]
    st.last_analysis_at = format_time(at)
    summary = _summarise(rec)
    if rec.verdict == "pass":
        st.passed_intervals += 1
        st.inconclusive_since = None
        tick.emit("Normal", "AnalysisPassed", summary)
    elif rec.verdict == "fail":
        st.failed_intervals += 1
        st.inconclusive_since = None
        limit = ro.analysis.failure_limit
        tick.emit(
            "Warning",
            "AnalysisFailed",
            f"{summary} ({st.failed_intervals} failed, {limit} tolerated)",
        )
        if st.failed_intervals > limit:
            _roll_back(
                tick,
                "RolledBack",
                "AnalysisFailed",
                f"{st.failed_intervals} failed intervals, more than failureLimit {limit}; "
                f"last: {summary}",
            )
    else:
        if st.inconclusive_since is None:
            st.inconclusive_since = format_time(start)
        tick.emit("Warning", "AnalysisInconclusive", summary)


def _check_inconclusive_deadline(tick: _Tick, ro: Rollout) -> None:
    st = tick.st
    if st.inconclusive_since is None:
        return
    deadline = parse_duration(ro.analysis.inconclusive_deadline)
    waited = seconds_between(st.inconclusive_since, tick.now)
    if waited < deadline:
        return
    last = _summarise(st.analysis[-1]) if st.analysis else "no analysis result"
    waiting = _waiting_for_evidence(st)
    if waiting:
        last = f"{waiting}; {last}"
    _roll_back(
        tick,
        "Failed",
        "InconclusiveDeadline",
        f"analysis inconclusive for {waited:.0f}s, past inconclusiveDeadline "
        f"{ro.analysis.inconclusive_deadline}: the candidate could not be judged; last: {last}",
    )


def _next_step(tick: _Tick, ro: Rollout) -> None:
    st = tick.st
    st.step = (st.step or 0) + 1
    st.step_started_at = None
    st.passed_intervals = 0
    st.inconclusive_since = None
    st.phase = "Progressing"
    weights, mirror = intended_route(tick.spec, st)
    st.message = f"step {st.step + 1}/{step_count(ro)}: moving to {_describe(weights, mirror)}"


def _begin_promotion(tick: _Tick, why: str) -> None:
    st = tick.st
    st.phase = "Promoting"
    st.paused = False
    st.message = f"promoting {st.candidate}: {why}"
    tick.emit("Normal", "Promoting", st.message)
    tick.condition("Progressing", "True", "Promoting", st.message)
    _finish_promotion(tick)


def _finish_promotion(tick: _Tick) -> None:
    st = tick.st
    weights, mirror = intended_route(tick.spec, st)
    if not route_matches(weights, mirror, tick.obs.weights, tick.obs.mirror_percent):
        return
    st.phase = "Promoted"
    st.stable = st.candidate
    st.step_started_at = None
    st.inconclusive_since = None
    st.message = f"{st.candidate} (revision {st.candidate_revision}) serves all traffic"
    tick.emit("Normal", "Promoted", st.message)
    tick.condition("Promoted", "True", "Promoted", st.message)
    tick.condition("Progressing", "False", "Promoted", st.message)


def _roll_back(tick: _Tick, phase: Phase, reason: str, message: str) -> None:
    st = tick.st
    if st.phase == "Promoted":
        st.stable = tick.spec.stable
    st.phase = phase
    st.paused = False
    st.step_started_at = None
    st.inconclusive_since = None
    st.message = f"{reason}: {message}; all traffic back to {st.stable}"
    tick.emit("Warning", reason, st.message)
    tick.condition("RolledBack", "True", reason, st.message)
    tick.condition("Promoted", "False", reason, st.message)
    tick.condition("Progressing", "False", reason, st.message)


def _describe(weights: Mapping[str, int], mirror: int) -> str:
    text = ", ".join(f"{k} {v}%" for k, v in weights.items())
    return f"{text}, mirror {mirror}%" if mirror else text


def _summarise(rec: AnalysisRecord) -> str:
    parts = []
    for c in rec.checks:
        values = ""
        if c.candidate_value is not None or c.stable_value is not None:
            values = f" candidate={_num(c.candidate_value)} stable={_num(c.stable_value)}"
        p = f" p={c.p_value:.3g}" if c.p_value is not None else ""
        parts.append(f"{c.name} {c.verdict}{values}{p}")
    body = "; ".join(parts) if parts else "no checks"
    return f"interval ending {rec.at} {rec.verdict}: {body}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
