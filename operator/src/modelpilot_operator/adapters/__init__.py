"""IO the deciding code needs but must not do itself: the Prometheus HTTP API (for the
analysis) and the runtime pods' HTTP API (for the execution provider in status)."""

from .pods import http_provider_probe
from .prometheus import PrometheusClient, PrometheusSource

__all__ = ["PrometheusClient", "PrometheusSource", "http_provider_probe"]
