"""The operator's own rollout metrics for the dashboards (prometheus-client)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from ..api.v1alpha1.status import Phase
from ..rollout import Decision

PHASES: tuple[Phase, ...] = (
    "Pending", "Stable", "Progressing", "Paused", "AwaitingPromotion", "Promoting",
    "Promoted", "RolledBack", "Failed",
)  # fmt: skip

ROLLOUT_PHASE = Gauge(
    "modelpilot_rollout_phase",
    "1 for the ModelDeployment's current rollout phase, 0 for the others.",
    ("namespace", "name", "phase"),
)
ROLLOUT_WEIGHT = Gauge(
    "modelpilot_rollout_weight_percent",
    "Traffic percent per version as read back from the route.",
    ("namespace", "name", "version"),
)
ROLLOUT_STEP = Gauge(
    "modelpilot_rollout_step", "Current rollout step (1-based; 0 without a rollout).",
    ("namespace", "name"),
)  # fmt: skip
ANALYSIS_VERDICTS = Counter(
    "modelpilot_rollout_analysis_verdicts",
    "Analysis verdicts per check and interval.",
    ("namespace", "name", "check", "verdict"),
)
_last_counted: dict[tuple[str, str], str] = {}


def record_decision(namespace: str, name: str, decision: Decision) -> None:
    """Export a tick's outcome."""
    st = decision.status
    for phase in PHASES:
        ROLLOUT_PHASE.labels(namespace, name, phase).set(1 if st.phase == phase else 0)
    for version, weight in st.weights.items():
        ROLLOUT_WEIGHT.labels(namespace, name, version).set(weight)
    ROLLOUT_STEP.labels(namespace, name).set(0 if st.step is None else st.step + 1)
    if st.analysis and _last_counted.get((namespace, name)) != st.analysis[-1].at:
        rec = st.analysis[-1]
        _last_counted[(namespace, name)] = rec.at
        for check in rec.checks:
            ANALYSIS_VERDICTS.labels(namespace, name, check.name, check.verdict).inc()
