"""Operator settings: environment variables, which the ``modelpilot operator run`` flags set.

=============================  =======================================================
``MODELPILOT_NAMESPACES``      comma-separated namespaces to watch; empty: all
``MODELPILOT_LOG_LEVEL``       debug, info, warning, error (default info)
``MODELPILOT_LOG_FORMAT``      json or plain (default plain)
``MODELPILOT_RESYNC_PERIOD``   how often every ModelDeployment is re-checked (default 5m)
``MODELPILOT_RUNTIME_IMAGE``   runtime image for versions that name none
``MODELPILOT_PEERING``         kopf peering name for leader election; empty: standalone
``MODELPILOT_METRICS_PORT``    port of /healthz and /metrics (default 8080; 0: off)
``MODELPILOT_PROMETHEUS_URL``  Prometheus the rollout analysis queries
``MODELPILOT_PROMETHEUS_TIMEOUT``  per query (default 10s)
``MODELPILOT_PROMETHEUS_TOKEN``    bearer token for Prometheus, if it needs one
``MODELPILOT_SERVICE_MONITOR`` make a ServiceMonitor per model when the CRD exists (true)
``MODELPILOT_PROBE_PROVIDERS`` ask a ready pod per version for its execution provider (true)
=============================  =======================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import __version__
from .api.v1alpha1 import parse_duration

PREFIX = "MODELPILOT_"
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/modelpilot/runtime:{__version__}"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("plain", "json")


def _choice(options: tuple[str, ...]) -> object:
    def conv(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return conv


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "plain"
    resync_period: float = 300.0
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    peering: str = ""
    metrics_port: int = 8080
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    prometheus_timeout: float = 10.0
    prometheus_token: str = field(default="", repr=False)
    service_monitor: bool = True
    probe_providers: bool = True

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
        if self.resync_period <= 0:
            raise ValueError("resync period must be longer than 0")

    @property
    def all_namespaces(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``MODELPILOT_*`` variables; a wrong value raises ValueError naming it."""
        env = os.environ if env is None else env
        d = cls()

        def get(name: str) -> str | None:
            return env.get(PREFIX + name)

        def parse(name: str, default: object, conv: object) -> object:
            raw = get(name)
            if raw is None or raw == "":
                return default
            try:
                return conv(raw)  # type: ignore[operator]
            except ValueError as exc:
                raise ValueError(f"{PREFIX}{name}={raw!r}: {exc}") from None

        namespaces = tuple(n.strip() for n in (get("NAMESPACES") or "").split(",") if n.strip())
        try:
            return cls(
                namespaces=namespaces,
                log_level=str(parse("LOG_LEVEL", d.log_level, _choice(LOG_LEVELS))),
                log_format=str(parse("LOG_FORMAT", d.log_format, _choice(LOG_FORMATS))),
                resync_period=float(parse("RESYNC_PERIOD", d.resync_period, parse_duration)),  # type: ignore[arg-type]
                runtime_image=str(parse("RUNTIME_IMAGE", d.runtime_image, str)),
                peering=get("PEERING") or "",
                metrics_port=int(parse("METRICS_PORT", d.metrics_port, int)),  # type: ignore[call-overload]
                prometheus_url=str(parse("PROMETHEUS_URL", d.prometheus_url, str)),
                prometheus_timeout=float(
                    parse("PROMETHEUS_TIMEOUT", d.prometheus_timeout, parse_duration)  # type: ignore[arg-type]
                ),
                prometheus_token=get("PROMETHEUS_TOKEN") or "",
                service_monitor=bool(parse("SERVICE_MONITOR", d.service_monitor, _bool)),
                probe_providers=bool(parse("PROBE_PROVIDERS", d.probe_providers, _bool)),
            )
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    def to_env(self) -> dict[str, str]:
        """The variables that give these settings (for a child process, or kopf run -m)."""
        return {
            PREFIX + "NAMESPACES": ",".join(self.namespaces),
            PREFIX + "LOG_LEVEL": self.log_level,
            PREFIX + "LOG_FORMAT": self.log_format,
            PREFIX + "RESYNC_PERIOD": f"{self.resync_period:g}s",
            PREFIX + "RUNTIME_IMAGE": self.runtime_image,
            PREFIX + "PEERING": self.peering,
            PREFIX + "METRICS_PORT": str(self.metrics_port),
            PREFIX + "PROMETHEUS_URL": self.prometheus_url,
            PREFIX + "PROMETHEUS_TIMEOUT": f"{self.prometheus_timeout:g}s",
            PREFIX + "PROMETHEUS_TOKEN": self.prometheus_token,
            PREFIX + "SERVICE_MONITOR": str(self.service_monitor).lower(),
            PREFIX + "PROBE_PROVIDERS": str(self.probe_providers).lower(),
        }
