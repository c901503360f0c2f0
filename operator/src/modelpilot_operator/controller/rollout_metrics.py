"""Export each rollout tick's outcome as the operator metrics the dashboards and alerts read
(names and labels: :mod:`modelpilot_operator.metrics`)."""

from __future__ import annotations

from ..metrics import METRICS, OperatorMetrics
from ..rollout import Decision

_last_counted: dict[tuple[str, str], str] = {}


def record_decision(
    namespace: str, name: str, decision: Decision, metrics: OperatorMetrics = METRICS
) -> None:
    """Phase, step, read-back weights, and each new analysis interval's values and verdicts."""
    st = decision.status
    metrics.set_phase(namespace, name, st.phase)
    metrics.set_weights(namespace, name, st.weights)
    metrics.step.labels(namespace, name).set(-1 if st.step is None else st.step)
    if not st.analysis or _last_counted.get((namespace, name)) == st.analysis[-1].at:
        return
    record = st.analysis[-1]
    _last_counted[(namespace, name)] = record.at
    metrics.verdicts.labels(namespace, name, "interval", record.verdict).inc()
    for check in record.checks:
        metrics.verdicts.labels(namespace, name, check.name, check.verdict).inc()
        for version, value in (
            (st.stable, check.stable_value),
            (st.candidate, check.candidate_value),
        ):
            if version and value is not None:
                metrics.check_value.labels(namespace, name, check.name, version).set(value)


def forget_decisions(namespace: str, name: str, metrics: OperatorMetrics = METRICS) -> None:
    """A deleted ModelDeployment: its series and what was counted of it go."""
    metrics.forget(namespace, name)
    _last_counted.pop((namespace, name), None)
