"""Operator settings: one :class:`Settings`, from ``MODELPILOT_*`` variables with the
``modelpilot operator run`` flags over them, passed explicitly to what needs it.

===================================  ===================================================
``MODELPILOT_NAMESPACES``            comma-separated namespaces to watch; empty: all
``MODELPILOT_LOG_LEVEL``             debug, info, warning, error (default info)
``MODELPILOT_LOG_FORMAT``            json or plain (default plain)
``MODELPILOT_RESYNC_PERIOD``         how often every ModelDeployment is re-checked (5m)
``MODELPILOT_WORKERS``               ModelDeployments reconciled at once (default 4)
``MODELPILOT_RUNTIME_IMAGE``         runtime image for versions that name none
``MODELPILOT_METRICS_PORT``          port of /healthz and /metrics (default 8080; 0: off)
``MODELPILOT_LEADER_ELECTION``       elect one active replica on a Lease (default true)
``MODELPILOT_LEADER_ELECTION_NAMESPACE``  namespace of the Lease (default: the pod's
                                     namespace, else the first watched one, else default)
``MODELPILOT_LEADER_ELECTION_NAME``  name of the Lease (default modelpilot-operator)
``MODELPILOT_LEADER_ID``             this replica's identity (default: the pod's name, else
                                     host name and process id)
``MODELPILOT_LEASE_DURATION``        how long a Lease holds without renewal (default 15s)
``MODELPILOT_PROMETHEUS_URL``        Prometheus the rollout analysis queries
``MODELPILOT_PROMETHEUS_TIMEOUT``    per query (default 10s)
``MODELPILOT_PROMETHEUS_TOKEN``      bearer token for Prometheus (or ``..._TOKEN_FILE``)
``MODELPILOT_PROMETHEUS_USERNAME``   basic auth (with ``..._PASSWORD``)
``MODELPILOT_PROMETHEUS_INSECURE_SKIP_VERIFY``  do not verify Prometheus's certificate
``MODELPILOT_PROMETHEUS_NAMESPACE_LABEL``  label holding the pod namespace (namespace)
``MODELPILOT_SERVICE_MONITOR``       make a ServiceMonitor per model when the CRD exists
``MODELPILOT_PROBE_PROVIDERS``       ask a ready pod per version for its execution provider
===================================  ===================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from . import __version__
from .analysis.prometheus import PrometheusSettings
from .api.v1alpha1 import parse_duration

PREFIX = "MODELPILOT_"
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/modelpilot/runtime:{__version__}"
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("plain", "json")

Duration = Annotated[float, Field(gt=0)]


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            return parse_duration(text)
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore")

    namespaces: Annotated[tuple[str, ...], NoDecode] = ()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["plain", "json"] = "plain"
    resync_period: Duration = 300.0
    workers: Annotated[int, Field(ge=1, le=64)] = 4
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    leader_election: bool = True
    leader_election_namespace: str = ""
    leader_election_name: str = "modelpilot-operator"
    leader_id: str = ""
    lease_duration: Duration = 15.0
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    prometheus_timeout: Duration = 10.0
    prometheus_token: str = Field(default="", repr=False)
    prometheus_token_file: str = ""
    prometheus_username: str = ""
    prometheus_password: str = Field(default="", repr=False)
    prometheus_insecure_skip_verify: bool = False
    prometheus_namespace_label: str = "namespace"
    service_monitor: bool = True
    probe_providers: bool = True

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(n.strip() for n in value.split(",") if n.strip())
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("resync_period", "prometheus_timeout", "lease_duration", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return _duration(value)

    @model_validator(mode="after")
    def _token_file(self) -> Settings:
        if self.prometheus_token_file and not self.prometheus_token:
            token = Path(self.prometheus_token_file).read_text().strip()
            object.__setattr__(self, "prometheus_token", token)
        return self

    @property
    def all_namespaces(self) -> bool:
        return not self.namespaces

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``env`` (the process environment when None), ``overrides`` over
        them; a wrong value raises ValueError naming the variable."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = source.get(PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        values |= {k: v for k, v in overrides.items() if v is not None}
        try:
            # The environment was read above, so a given env= is the only source.
            return cls.model_validate(values)
        except ValidationError as err:
            first = err.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "?"
            where = f"{PREFIX}{name.upper()}" if name in values else name
            given = values.get(name)
            raise ValueError(f"{where}={given!r}: {first['msg']}") from None

    def lease_namespace(self) -> str:
        return (
            self.leader_election_namespace
            or os.environ.get("POD_NAMESPACE", "")
            or (self.namespaces[0] if self.namespaces else "")
            or "default"
        )

    def identity(self) -> str:
        return (
            self.leader_id or os.environ.get("POD_NAME") or f"{os.uname().nodename}-{os.getpid()}"
        )

    def prometheus(self) -> PrometheusSettings:
        return PrometheusSettings(
            url=self.prometheus_url,
            bearer_token=self.prometheus_token or None,
            username=self.prometheus_username or None,
            password=self.prometheus_password or None,
            timeout_s=self.prometheus_timeout,
            verify_tls=not self.prometheus_insecure_skip_verify,
            namespace_label=self.prometheus_namespace_label,
        )
