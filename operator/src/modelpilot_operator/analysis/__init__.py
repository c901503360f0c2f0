"""Metric queries (PromQL templates) and the statistical verdicts drawn from them.

``analyze(rollout, target, window, source)`` evaluates every check of a rollout for one
interval and returns an :class:`~modelpilot_operator.api.v1alpha1.AnalysisRecord` with
both versions' values, the test statistic, the p-value and the verdict of each check.
``source`` is a :class:`PrometheusSource` in the operator (httpx, settings from the
environment) and a simulator in the benchmark. See :mod:`.checks` for the rules.
"""

from .checks import DEFAULT_MAX_DIVERGENCE, DEFAULT_MAX_RATIO, AnalysisOutcome, analyze, combine
from .prometheus import (
    MetricSource,
    MetricsUnavailableError,
    PrometheusClient,
    PrometheusSettings,
    PrometheusSource,
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
    "PrometheusClient",
    "PrometheusSettings",
    "PrometheusSource",
    "QueryError",
    "RequestCounts",
    "Sample",
    "Target",
    "analyze",
    "combine",
]
