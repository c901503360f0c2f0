"""`modelpilot operator run`: the operator, with its settings from flags or MODELPILOT_* vars."""
# ruff: noqa: A005  (the module is named after the subcommand; it never shadows stdlib `operator` as an absolute import)

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

from ..api.v1alpha1 import parse_duration
from ..settings import LOG_FORMATS, LOG_LEVELS, Settings

HANDLERS = "modelpilot_operator.handlers"


def add_parser(sub: Any) -> None:
    """Register ``operator run`` on the ``modelpilot`` subcommand parser."""
    op = sub.add_parser("operator", help="run the operator")
    op_sub = op.add_subparsers(dest="operator_command", required=True)
    run = op_sub.add_parser(
        "run",
        help="reconcile ModelDeployments until stopped",
        description="Flags override the MODELPILOT_* environment variables.",
    )
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        help="namespace to watch (repeatable); all namespaces when none is given",
    )
    run.add_argument("--log-level", choices=LOG_LEVELS)
    run.add_argument("--log-format", choices=LOG_FORMATS)
    run.add_argument("--resync-period", type=parse_duration, metavar="DURATION")
    run.add_argument("--runtime-image", metavar="IMAGE")
    run.add_argument("--peering", metavar="NAME", help="leader election peering object")
    run.add_argument("--metrics-port", type=int, help="/healthz and /metrics; 0: off")
    run.add_argument("--prometheus-url", metavar="URL")


def settings_from(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    """Environment first, flags over it."""
    values = dict(os.environ if env is None else env)
    base = Settings.from_env(values)
    overrides: dict[str, Any] = {
        "namespaces": tuple(args.namespaces) if args.namespaces else None,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "resync_period": args.resync_period,
        "runtime_image": args.runtime_image,
        "peering": args.peering,
        "metrics_port": args.metrics_port,
        "prometheus_url": args.prometheus_url,
    }
    fields = {**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    return Settings(**fields)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        k8s = getattr(record, "k8s_ref", None)
        if k8s:
            doc["object"] = k8s
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ValueError as err:
        print(f"modelpilot operator run: {err}", file=sys.stderr)
        return 2
    # The handlers read their settings from the environment, like under `kopf run -m`.
    os.environ.update(settings.to_env())
    _setup_logging(settings)
    import kopf

    importlib.import_module(HANDLERS)
    kopf.run(
        clusterwide=settings.all_namespaces,
        namespaces=settings.namespaces,
        standalone=not settings.peering,
        peering_name=settings.peering or None,
    )
    return 0
