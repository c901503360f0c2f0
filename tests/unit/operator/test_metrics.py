"""The operator's metric names are a contract with the chart's dashboards and alerts."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from modelpilot_operator.metrics import CONTRACT, PHASES, OperatorMetrics

ROOT = Path(__file__).resolve().parents[3]


def test_exposed_names_are_the_contract() -> None:
    m = OperatorMetrics(CollectorRegistry())
    m.set_phase("ml", "fraud", "Progressing")
    m.step.labels("ml", "fraud").set(1)
    m.set_weights("ml", "fraud", {"v1": 75, "v2": 25})
    m.check_value.labels("ml", "fraud", "error-rate", "v2").set(0.01)
    m.verdicts.labels("ml", "fraud", "interval", "pass").inc()
    m.reconciles.labels("ok").inc()
    m.writes.labels("Deployment").inc()
    text = generate_latest(m.registry).decode()
    exposed = {
        n for n in re.findall(r"^(modelpilot_[a-z_]+)\{", text, re.M) if not n.endswith("_created")
    }
    assert exposed == set(CONTRACT)
    assert 'modelpilot_rollout_phase{name="fraud",namespace="ml",phase="Progressing"} 1.0' in text
    assert 'modelpilot_rollout_phase{name="fraud",namespace="ml",phase="Stable"} 0.0' in text
    assert len(PHASES) == 9


def test_forget_drops_one_model_only() -> None:
    m = OperatorMetrics(CollectorRegistry())
    m.set_phase("ml", "fraud", "Stable")
    m.set_phase("ml", "churn", "Stable")
    m.forget("ml", "fraud")
    text = generate_latest(m.registry).decode()
    assert 'name="fraud"' not in text
    assert 'name="churn"' in text


def test_chart_reads_only_contract_names() -> None:
    chart = ROOT / "charts" / "modelpilot"
    used: set[str] = set()
    for path in [*chart.glob("dashboards/*.json"), *chart.glob("templates/*.yaml")]:
        used |= set(re.findall(r"modelpilot_(?:rollout|reconcile|api)_[a-z_]+", path.read_text()))
    assert used <= set(CONTRACT), used - set(CONTRACT)
