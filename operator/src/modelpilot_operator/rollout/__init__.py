"""PURE: the rollout state machine: (spec, status, observations, now) -> decision.

The caller (``controller/rollout.py``, once per pass of the control loop) runs one tick::

    window = analysis_due(spec, status, now)            # is an interval due?
    record = the analysis of window, once its queries are done (off the worker)
    decision = reconcile(spec, status, Observations(weights read back from the route,
                         readiness, record), now)
    apply status <- decision.status (desiredWeights, mirrorPercent, ...); emit the events;
    the reconciler then renders the route from status.desiredWeights in the same pass

All state is in ``status``: the step, when it started, when the last interval ended, how
many intervals passed and failed, since when analysis has been inconclusive, the history of
analysis records, and the last manual request handled. An operator killed at any moment
resumes from status and the weights it reads back from the route.

Phases
------
``Pending``
    Nothing decided yet (a new object).
``Stable``
    No rollout in the spec: ``spec.stable`` gets 100%.
``Progressing``
    A candidate is being tried. Each step first waits until the candidate is ready and the
    weights read back from the route equal the step's weights (``status.stepStartedAt`` is
    set only then), then analysis runs interval by interval (after the first step's
    ``analysis.warmup``, which is never judged: the evidence starts at its end, and
    ``status.rolloutStartedAt`` moves there). A check that lacks evidence for its tolerance
    holds the step with "waiting for evidence: N more candidate requests needed at this
    rate" in ``status.message``, until it passes or ``inconclusiveDeadline`` runs out. A
    step is done when it has been held for its pause (one interval if unset) and has
    ``pause / interval`` passing intervals (canary; at least one) or ``iterations`` passing
    intervals (abTest, shadow, blueGreen).
``Paused``
    A person paused the rollout: weights stay, analysis stops. ``resume`` goes back to
    ``Progressing``; the next interval starts at the resume.
``AwaitingPromotion``
    ``promotion: manual`` and every step passed: the candidate keeps its last weights and
    analysis goes on (a failure still rolls back) until a ``promote`` request names the
    candidate's revision (``status.candidateRevision``). A request naming another revision
    does nothing but raise a Warning Event.
``Promoting``
    All traffic goes to the candidate; once the route reads back 100% candidate the phase is
    ``Promoted``, ``status.stable`` becomes the candidate and the ``Promoted`` condition is
    True (``kubectl wait --for=condition=Promoted``).
``Promoted``
    The candidate serves everything. The rollout ends here until the spec names another
    candidate revision (or drops ``rollout`` and names the new stable).
``RolledBack``
    More failed intervals than ``failureLimit``, an ``abort`` or a ``rollback`` request:
    the stable version gets 100% at once, the candidate nothing. ``retry`` starts over.
``Failed``
    Analysis stayed inconclusive (too few samples, NaN or empty results, Prometheus
    unreachable) for longer than ``inconclusiveDeadline``: the candidate could not be judged,
    so it gets no traffic either. ``retry`` starts over.

Strategies: ``canary`` walks the step weights; ``abTest`` keeps 100% on stable while the
route sends requests matching ``spec.rollout.match`` to the candidate; ``shadow`` keeps 100%
on stable and mirrors ``mirrorPercent`` to the candidate (its answers are dropped);
``blueGreen`` keeps 100% on stable while the candidate, at full replicas, is judged on the
traffic sent to its own Service, then switches at once. All four promote by moving 100% to
the candidate.

A new candidate revision (the candidate's version spec changed, or another candidate is
named) or a new stable during a rollout starts the rollout over from the first step.
"""

from .clock import format_time, parse_time
from .engine import (
    ACTIVE_PHASES,
    ENDED_PHASES,
    AnalysisWindow,
    Decision,
    Event,
    Observations,
    analysis_due,
    intended_route,
    reconcile,
    required_passes,
    route_matches,
    set_condition,
    step_count,
)

__all__ = [
    "ACTIVE_PHASES",
    "ENDED_PHASES",
    "AnalysisWindow",
    "Decision",
    "Event",
    "Observations",
    "analysis_due",
    "format_time",
    "intended_route",
    "parse_time",
    "reconcile",
    "required_passes",
    "route_matches",
    "set_condition",
    "step_count",
]
