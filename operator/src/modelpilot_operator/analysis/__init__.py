"""Metric queries (PromQL templates) and the statistical verdicts drawn from them.

``analyze(rollout, target, window, source)`` evaluates every check of a rollout for one
interval and returns an :class:`~modelpilot_operator.api.v1alpha1.AnalysisRecord` with
both versions' values, the test statistic, the p-value and the verdict of each check.
``source`` is :class:`modelpilot_operator.adapters.PrometheusSource` in the operator and a
simulator in the benchmark. See :mod:`.checks` for the rules.
"""

from .checks import DEFAULT_MAX_DIVERGENCE, DEFAULT_MAX_RATIO, AnalysisOutcome, analyze, combine
from .prometheus import (
    MetricSource,
    MetricsUnavailableError,
    PrometheusSettings,
    QueryError,
    RequestCounts,
    Sample,
    Target,
)

__all__ = [
    "DEFAULT_MAX_DIVERGENCE",
    "DEFAULT_MAX_RATIO",
    "AnalysisOutcome",
    "MetricSource",
    "MetricsUnavailableError",
    "PrometheusSettings",
    "QueryError",
    "RequestCounts",
    "Sample",
    "Target",
    "analyze",
    "combine",
]
