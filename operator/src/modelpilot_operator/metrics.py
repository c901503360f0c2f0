"""The operator's own metrics: what the rollout dashboard and the alerts read.

Names are fixed (a test pins them, and the chart's dashboard and PrometheusRule use them):

- ``modelpilot_rollout_phase{namespace,name,phase}``: 1 for the current phase, 0 for others.
- ``modelpilot_rollout_step{namespace,name}``: index of the canary step (-1 without one).
- ``modelpilot_rollout_weight{namespace,name,version}``: percent of traffic read back from
  the route.
- ``modelpilot_rollout_check_value{namespace,name,check,version}``: the last value a check
  measured for a version.
- ``modelpilot_rollout_verdicts_total{namespace,name,check,verdict}``: verdicts by check
  (``check="interval"`` for the interval's overall verdict).
- ``modelpilot_reconcile_total{result}`` and ``modelpilot_api_writes_total{kind}``.
"""

from __future__ import annotations

import typing

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from .api.v1alpha1.status import Phase

PHASES: tuple[str, ...] = typing.get_args(Phase)

CONTRACT = (
    "modelpilot_rollout_phase",
    "modelpilot_rollout_step",
    "modelpilot_rollout_weight",
    "modelpilot_rollout_check_value",
    "modelpilot_rollout_verdicts_total",
    "modelpilot_reconcile_total",
    "modelpilot_api_writes_total",
)


class OperatorMetrics:
    """All operator metrics in one registry (one per process; tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        key = ("namespace", "name")
        self.phase = Gauge(
            "modelpilot_rollout_phase",
            "1 for the current rollout phase.",
            (*key, "phase"),
            registry=r,
        )
        self.step = Gauge("modelpilot_rollout_step", "Current canary step.", key, registry=r)
        self.weight = Gauge(
            "modelpilot_rollout_weight",
            "Percent of traffic per version, as read back from the route.",
            (*key, "version"),
            registry=r,
        )
        self.check_value = Gauge(
            "modelpilot_rollout_check_value",
            "Last value an analysis check measured for a version.",
            (*key, "check", "version"),
            registry=r,
        )
        self.verdicts = Counter(
            "modelpilot_rollout_verdicts",
            "Analysis verdicts by check (check=interval: the interval's verdict).",
            (*key, "check", "verdict"),
            registry=r,
        )
        self.reconciles = Counter(
            "modelpilot_reconcile", "Reconciles by result (ok, error).", ("result",), registry=r
        )
        self.writes = Counter(
            "modelpilot_api_writes", "Writes to the API server by kind.", ("kind",), registry=r
        )
        self.requests = Counter(
            "modelpilot_api_requests",
            "Requests to the API server by HTTP verb (WATCH: each watch opened).",
            ("verb",),
            registry=r,
        )

    def set_phase(self, namespace: str, name: str, phase: str) -> None:
        """Mark ``phase`` as current (every other phase 0) for one ModelDeployment."""
        for p in PHASES:
            self.phase.labels(namespace, name, p).set(1 if p == phase else 0)

    def set_weights(self, namespace: str, name: str, weights: dict[str, int]) -> None:
        for version, w in weights.items():
            self.weight.labels(namespace, name, version).set(w)

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted ModelDeployment."""
        for metric in (self.phase, self.step, self.weight, self.check_value, self.verdicts):
            for labels in list(metric._metrics):  # prometheus_client has no public iterator
                if labels[:2] == (namespace, name):
                    metric.remove(*labels)


METRICS = OperatorMetrics(REGISTRY)
"""The process-wide instance the handlers update and the operator's /metrics serves."""
