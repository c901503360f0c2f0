"""`modelpilot operator run`: the operator, with its settings from flags or MODELPILOT_* vars."""
# ruff: noqa: A005  (the module is named after the subcommand; it never shadows stdlib `operator` as an absolute import)

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..api.v1alpha1 import parse_duration
from ..settings import LOG_FORMATS, LOG_LEVELS, Settings


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
    run.add_argument("--workers", type=int, help="ModelDeployments reconciled at once")
    run.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="elect one active replica on a Lease (default on)",
    )
    run.add_argument("--metrics-port", type=int, help="/healthz and /metrics; 0: off")
    run.add_argument("--prometheus-url", metavar="URL")


def settings_from(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    """Environment first, flags over it."""
    return Settings.load(
        env,
        namespaces=tuple(args.namespaces) if args.namespaces else None,
        log_level=args.log_level,
        log_format=args.log_format,
        resync_period=args.resync_period,
        runtime_image=args.runtime_image,
        workers=args.workers,
        leader_election=args.leader_election,
        metrics_port=args.metrics_port,
        prometheus_url=args.prometheus_url,
    )


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
    _setup_logging(settings)
    import kopf

    from ..handlers import register

    registry = kopf.OperatorRegistry()
    register(settings, registry)
    # Leader election is the Lease's (see modelpilot_operator.k8s.leader), not kopf peering.
    kopf.run(
        registry=registry,
        clusterwide=settings.all_namespaces,
        namespaces=settings.namespaces,
        standalone=True,
    )
    return 0
