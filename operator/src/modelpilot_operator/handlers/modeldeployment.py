"""ModelDeployment handlers: reconcile on create, update, resume and every resync; refresh
status when the Deployments or pods of a ModelDeployment change."""

from __future__ import annotations

import time
from typing import Any

import kopf
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from ..api.v1alpha1 import API_VERSION, GROUP, KIND, PLURAL, VERSION, ModelDeployment
from ..builders import LABEL_MODEL, MANAGED_BY
from ..k8s.client import ApiError
from ..k8s.kinds import MODEL_DEPLOYMENT
from ..k8s.reconcile import ReconcileResult
from ..metrics import METRICS
from .state import SETTINGS, reconciler

RECONCILES = Counter(
    "modelpilot_operator_reconciles",
    "Reconciles of ModelDeployments, by trigger and result.",
    ("trigger", "result"),
)
RECONCILE_SECONDS = Histogram(
    "modelpilot_operator_reconcile_duration_seconds", "Time one reconcile took.", ("trigger",)
)
WRITES = Counter(
    "modelpilot_operator_child_writes",
    "Children applied or pruned, by kind and action.",
    ("kind", "action"),
)
CHILD_LABELS: dict[str, Any] = {
    "app.kubernetes.io/managed-by": MANAGED_BY,
    LABEL_MODEL: kopf.PRESENT,
}


def _count(trigger: str, result: str) -> None:
    RECONCILES.labels(trigger, result).inc()
    METRICS.reconciles.labels(result).inc()


def _post_events(body: Any, result: ReconcileResult) -> None:
    """An Event for each condition that changed: problems as warnings, with what to change."""
    for cond in result.transitions():
        if cond["type"] == "Degraded" and cond["status"] == "True":
            kopf.warn(body, reason=cond["reason"], message=cond["message"])
        elif cond["type"] == "Ready" and cond["status"] == "True":
            kopf.info(body, reason="Ready", message=cond["message"])
        elif cond["type"] == "Degraded" and cond["status"] == "False":
            kopf.info(body, reason="Recovered", message="the problems reported before are gone")


def _report_invalid(body: Any, err: ValidationError) -> None:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
    message = f"the spec is invalid, nothing was applied: {problems}"
    generation = body.get("metadata", {}).get("generation")
    status = body.get("status") or {}
    old = {c.get("type"): c for c in status.get("conditions") or []}
    if old.get("Degraded", {}).get("message") == message:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conds = [
        {
            "type": t,
            "status": s,
            "reason": "InvalidSpec",
            "message": message,
            "lastTransitionTime": now,
            "observedGeneration": generation,
        }
        for t, s in (("Ready", "False"), ("Progressing", "False"), ("Degraded", "True"))
    ]
    reconciler().api.apply_status(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": body["metadata"]["name"],
                "namespace": body["metadata"]["namespace"],
            },
            "status": {"observedGeneration": generation, "conditions": conds},
        }
    )
    kopf.warn(body, reason="InvalidSpec", message=message)


def _reconcile(namespace: str, name: str, trigger: str, logger: kopf.Logger) -> None:
    """Reconcile the ModelDeployment as it is now (read inside the per-object lock)."""
    rec = reconciler()
    with rec.exclusive(namespace, name):
        started = time.perf_counter()
        try:
            body = rec.api.get(MODEL_DEPLOYMENT, namespace, name)
        except ApiError as err:
            _count(trigger, "error")
            raise kopf.TemporaryError(f"cannot read {namespace}/{name}: {err}", delay=10) from err
        if body is None or body["metadata"].get("deletionTimestamp"):
            rec.forget(namespace, name)
            return
        try:
            md = ModelDeployment.model_validate(body)
        except ValidationError as err:
            # Admission lets through what only the operator can check (e.g. PromQL syntax):
            # report it and wait for the next spec change instead of retrying.
            _count(trigger, "invalid")
            _report_invalid(body, err)
            return
        if trigger == "resync":
            rec.refresh_kinds()
        try:
            result = rec.reconcile(md)
        except ApiError as err:
            _count(trigger, "error")
            raise kopf.TemporaryError(f"API error while reconciling: {err}", delay=10) from err
        finally:
            RECONCILE_SECONDS.labels(trigger).observe(time.perf_counter() - started)
        _count(trigger, "ok")
        for key in result.report.applied:
            WRITES.labels(key.split("/")[0], "apply").inc()
        for key in result.report.pruned:
            WRITES.labels(key.split("/")[0], "prune").inc()
        if result.report.writes:
            logger.info(
                "%s: applied %s; pruned %s",
                trigger,
                ", ".join(result.report.applied) or "nothing",
                ", ".join(result.report.pruned) or "nothing",
            )
        _post_events(body, result)


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(name: str, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
    _reconcile(namespace or "", name, "create", logger)


@kopf.on.update(GROUP, VERSION, PLURAL)
def on_update(name: str, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
    _reconcile(namespace or "", name, "update", logger)


@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_resume(name: str, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
    _reconcile(namespace or "", name, "resume", logger)


@kopf.timer(
    GROUP, VERSION, PLURAL, interval=SETTINGS.resync_period, initial_delay=SETTINGS.resync_period
)
def resync(name: str, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
    """Repairs drift: children edited or deleted by hand are put back."""
    _reconcile(namespace or "", name, "resync", logger)


def _child_event(meta: kopf.Meta, namespace: str | None, logger: kopf.Logger) -> None:
    name = meta.get("labels", {}).get(LABEL_MODEL)
    if not name or not namespace:
        return
    try:
        _reconcile(namespace, name, "child", logger)
    except kopf.TemporaryError as err:
        # The next event or the resync tries again; a watch handler is not retried.
        logger.warning("reconcile of %s/%s after a child event failed: %s", namespace, name, err)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
def on_deployment_event(
    meta: kopf.Meta, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    _child_event(meta, namespace, logger)


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
def on_pod_event(meta: kopf.Meta, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
    _child_event(meta, namespace, logger)
