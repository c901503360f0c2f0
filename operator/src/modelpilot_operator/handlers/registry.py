"""The kopf handlers, registered on a registry for one :class:`Settings`.

kopf watches ModelDeployments and hands every event to the controller (no change-detecting
handler, no timer, no daemon: kopf keeps no state on the objects and puts no finalizer on
them). Start-up builds the controller, its watch caches, leader election and workers, and
the /healthz and /metrics endpoint; clean-up stops them and releases the Lease.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from ..adapters import PrometheusClient, PrometheusSource, http_provider_probe
from ..api.v1alpha1 import GROUP, PLURAL, VERSION
from ..builders import BuildOptions
from ..controller import Controller
from ..k8s.client import ApiServer
from ..k8s.leader import LeaderElector
from ..metrics import METRICS
from ..settings import Settings

# The *_created series double the scrape and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


def _count_write(verb: str, kind: str) -> None:
    METRICS.writes.labels(kind).inc()


def _count_request(verb: str) -> None:
    METRICS.requests.labels(verb).inc()


def build(settings: Settings) -> tuple[Controller, LeaderElector | None]:
    """The controller (and its leader election) for ``settings``, not started."""
    elector: LeaderElector | None = None
    if settings.leader_election:
        elector = LeaderElector(
            ApiServer.from_environment(on_request=_count_request),
            namespace=settings.lease_namespace(),
            name=settings.leader_election_name,
            identity=settings.identity(),
            lease_duration=settings.lease_duration,
            renew_deadline=settings.lease_duration * 2 / 3,
            retry_period=max(0.5, settings.lease_duration / 7.5),
        )
    leading = elector.is_leader if elector is not None else (lambda: True)
    api = ApiServer.from_environment(
        on_write=_count_write, may_write=leading, on_request=_count_request
    )
    controller = Controller(
        api=api,
        watch_api=ApiServer.from_environment(on_request=_count_request),
        namespaces=settings.namespaces,
        options=BuildOptions(
            default_image=settings.runtime_image, service_monitor=settings.service_monitor
        ),
        resync_period=settings.resync_period,
        workers=settings.workers,
        source=PrometheusSource(PrometheusClient(settings.prometheus())),
        probe=http_provider_probe() if settings.probe_providers else None,
        leading=leading,
    )
    if elector is not None:
        elector.on_change = controller.became_leader
    return controller, elector


def register(settings: Settings, registry: kopf.OperatorRegistry) -> None:
    """Register the handlers for ``settings`` on ``registry`` (for ``kopf.run``)."""
    running: dict[str, Any] = {}

    @kopf.on.startup(registry=registry)
    async def startup(logger: kopf.Logger, **kwargs: Any) -> None:
        configure_kopf(kwargs["settings"])
        controller, elector = build(settings)
        running["controller"], running["elector"] = controller, elector
        controller.start()
        if elector is not None:
            elector.start()
        else:
            controller.became_leader(True)
        if settings.metrics_port:
            running["metrics"] = await _serve_metrics(settings.metrics_port, controller)
        logger.info(
            "modelpilot operator: namespaces=%s resync=%ss workers=%d runtime image=%s "
            "leader election=%s",
            ",".join(settings.namespaces) or "*",
            settings.resync_period,
            settings.workers,
            settings.runtime_image,
            f"{elector.namespace}/{elector.name} as {elector.identity}" if elector else "off",
        )

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same configuration the controller's client loads: in-cluster, else KUBECONFIG.
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        elector: LeaderElector | None = running.get("elector")
        if elector is not None:
            elector.stop(release=True)
        controller: Controller | None = running.get("controller")
        if controller is not None:
            controller.stop()
        runner: web.AppRunner | None = running.get("metrics")
        if runner is not None:
            await runner.cleanup()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def on_model_deployment(event: kopf.RawEvent, **_: Any) -> None:
        controller: Controller | None = running.get("controller")
        if controller is not None:
            # kopf's initial listing comes as events without a type.
            controller.observe(str(event.get("type") or "ADDED"), dict(event["object"]))


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    # Watches end server-side every few minutes and are resumed; a silent connection is
    # dropped by the client before a load balancer would.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.posting.reporting_component = "modelpilot"
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 2


async def _serve_metrics(port: int, controller: Controller) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        # Answered from the operator's event loop: a blocked loop fails the probe.
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if not controller.synced:
            return web.Response(status=503, text="watch caches not synced yet\n")
        return web.Response(text="ok\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
