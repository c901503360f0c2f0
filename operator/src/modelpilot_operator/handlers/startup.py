"""Operator start-up: kopf's settings, logging, and the /healthz and /metrics endpoint."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from .state import SETTINGS

PREFIX = "modelpilot.io"
# The *_created series double the scrape and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    # kopf keeps its own state in annotations under our prefix, never in status (the schema
    # is structural: unknown status fields would be pruned).
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    # Watches end server-side every few minutes and are resumed; a silent connection is
    # dropped by the client before a load balancer would.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.posting.reporting_component = "modelpilot"
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    logging.getLogger().setLevel(SETTINGS.log_level.upper())
    if SETTINGS.metrics_port:
        await _serve_metrics(SETTINGS.metrics_port)
    logger.info(
        "modelpilot operator: namespaces=%s resync=%ss runtime image=%s peering=%s",
        ",".join(SETTINGS.namespaces) or "*",
        SETTINGS.resync_period,
        SETTINGS.runtime_image,
        SETTINGS.peering or "(standalone)",
    )


async def _serve_metrics(port: int) -> None:
    async def healthz(_: web.Request) -> web.Response:
        # Answered from the operator's event loop: a blocked loop fails the probe.
        return web.Response(text="ok\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
