"""Per ModelDeployment: a ServiceMonitor (Prometheus operator) for the runtime's metrics."""

from __future__ import annotations

from typing import Any

from ..api.v1alpha1 import ModelDeployment
from .meta import LABEL_MODEL, LABEL_VERSION, md_name, model_labels, object_meta

SCRAPE_INTERVAL = "15s"


def build_service_monitor(md: ModelDeployment) -> dict[str, Any]:
    """Scrapes every pod once, through the per-version Services (the stable Service, which
    carries no version label, would scrape the same pods again)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": object_meta(md, md_name(md), model_labels(md)),
        "spec": {
            "selector": {
                "matchLabels": {LABEL_MODEL: md_name(md)},
                "matchExpressions": [{"key": LABEL_VERSION, "operator": "Exists"}],
            },
            "endpoints": [{"port": "http", "path": "/metrics", "interval": SCRAPE_INTERVAL}],
        },
    }
