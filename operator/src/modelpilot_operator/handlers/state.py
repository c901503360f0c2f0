"""What the handlers share for the life of the process: settings and the reconciler."""

from __future__ import annotations

import threading

from ..builders import BuildOptions
from ..k8s.client import ApiServer
from ..k8s.observe import ProviderCache, http_provider_probe
from ..k8s.reconcile import Reconciler
from ..metrics import METRICS
from ..settings import Settings

SETTINGS = Settings.from_env()

_lock = threading.Lock()
_reconciler: Reconciler | None = None


def _count_write(verb: str, kind: str) -> None:
    METRICS.writes.labels(kind).inc()


def reconciler() -> Reconciler:
    """The process's reconciler, made on first use (after kopf has logged in)."""
    global _reconciler
    with _lock:
        if _reconciler is None:
            probe = http_provider_probe() if SETTINGS.probe_providers else None
            _reconciler = Reconciler(
                api=ApiServer.from_environment(on_write=_count_write),
                options=BuildOptions(
                    default_image=SETTINGS.runtime_image,
                    service_monitor=SETTINGS.service_monitor,
                ),
                providers=ProviderCache(probe),
            )
        return _reconciler
