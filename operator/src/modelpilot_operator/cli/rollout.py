"""Rollout verbs of the `modelpilot` command: status, promote, abort, retry, pause, resume,
rollback. Decisions are written to ``status.request`` through the status subresource."""

from __future__ import annotations

import argparse
import getpass
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from ..api.v1alpha1 import ModelDeploymentStatus, Request
from ..api.v1alpha1.status import Action

ACTIONS: tuple[Action, ...] = ("promote", "abort", "retry", "pause", "resume", "rollback")
HELP = {
    "promote": "approve the candidate: skip the current step, or everything with --full",
    "abort": "stop the rollout: all traffic back to stable",
    "retry": "start a rolled-back or failed rollout over",
    "pause": "hold the rollout where it is",
    "resume": "continue a paused rollout",
    "rollback": "all traffic back to the stable version at once (also after a promotion)",
}


def add_parsers(sub: Any) -> None:
    """Add the rollout verbs to the `modelpilot` sub-command parser."""
    st = sub.add_parser("status", help="a ModelDeployment's versions, weights, step and verdicts")
    _common(st)
    for action in ACTIONS:
        p = sub.add_parser(action, help=HELP[action])
        _common(p)
        if action == "promote":
            p.add_argument("--full", action="store_true", help="skip all remaining steps")
            p.add_argument(
                "--revision",
                help="candidate revision to approve (default: the one in status, shown first)",
            )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="ModelDeployment name")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--context", default=None, help="kubeconfig context")


def build_request(
    action: Action,
    status: ModelDeploymentStatus,
    *,
    full: bool = False,
    revision: str | None = None,
    now: datetime | None = None,
    who: str = "",
) -> Request:
    """The request for ``action``; promote names the candidate revision it approves."""
    return Request(
        action=action,
        revision=(revision or status.candidate_revision) if action == "promote" else None,
        full=full,
        id=uuid.uuid4().hex[:12],
        requested_at=(now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        requested_by=who,
    )


def format_status(obj: dict[str, Any]) -> str:
    """A readable table: phase, versions, weights, step and the last verdicts."""
    status = ModelDeploymentStatus.model_validate(obj.get("status") or {})
    spec = obj.get("spec") or {}
    rollout = spec.get("rollout") or {}
    meta = obj.get("metadata") or {}
    lines = [
        f"Name:       {meta.get('namespace', '')}/{meta.get('name', '')}",
        f"Phase:      {status.phase}{' (paused)' if status.paused else ''}",
        f"Message:    {status.message}",
    ]
    if status.candidate:
        steps = rollout.get("steps") or []
        n = len(steps) if rollout.get("strategy", "canary") == "canary" else 1
        step = "-" if status.step is None else f"{status.step + 1}/{n}"
        lines += [
            f"Strategy:   {rollout.get('strategy', 'canary')}   step {step}   "
            f"passed {status.passed_intervals}   failed {status.failed_intervals}"
            f"   mirror {status.mirror_percent}%",
            f"Candidate:  {status.candidate} (revision {status.candidate_revision})",
        ]
    lines.append("")
    lines.append(f"{'VERSION':<12}{'ROLE':<11}{'WEIGHT':>7}{'DESIRED':>9}{'READY':>8}  PROVIDER")
    ready = {v.name: v for v in status.versions}
    names = list(dict.fromkeys([*status.desired_weights, *status.weights, *ready]))
    for name in names:
        role = (
            "stable" if name == status.stable else "candidate" if name == status.candidate else ""
        )
        v = ready.get(name)
        replicas = f"{v.ready_replicas}/{v.desired_replicas}" if v else "-"
        lines.append(
            f"{name:<12}{role:<11}{status.weights.get(name, 0):>6}%"
            f"{status.desired_weights.get(name, 0):>8}%{replicas:>8}  "
            f"{(v.provider if v and v.provider else '-')}"
        )
    if status.analysis:
        lines += ["", f"{'INTERVAL END':<22}{'STEP':>5}  {'VERDICT':<13}CHECKS"]
        for rec in status.analysis[-5:]:
            checks = ", ".join(
                f"{c.name}={c.verdict}" + (f"(p={c.p_value:.2g})" if c.p_value is not None else "")
                for c in rec.checks
            )
            step = "-" if rec.step is None else str(rec.step + 1)
            lines.append(f"{rec.at:<22}{step:>5}  {rec.verdict:<13}{checks}")
    lines += _evidence_lines(status)
    if status.conditions:
        lines += [""] + [f"{c.type:<12}{c.status:<8}{c.reason}" for c in status.conditions]
    return "\n".join(lines)


def _evidence_lines(status: ModelDeploymentStatus) -> list[str]:
    """Per step, the planned sample size of each tolerance check and how far it has come."""
    last: dict[tuple[int | None, str], tuple[int | None, int | None, int | None]] = {}
    for rec in status.analysis:
        for c in rec.checks:
            if c.planned_samples is not None or c.needed_samples:
                last[(rec.step, c.name)] = (
                    c.candidate_samples,
                    c.planned_samples,
                    c.needed_samples,
                )
    if not last:
        return []
    lines = ["", f"{'STEP':>4}  {'CHECK':<16}{'CANDIDATE REQS':>15}{'PLANNED':>10}  NEEDED"]
    for (step, name), (have, planned, needed) in last.items():
        lines.append(
            f"{'-' if step is None else step + 1:>4}  {name:<16}"
            f"{'-' if have is None else have:>15}{'-' if planned is None else planned:>10}  "
            + ("enough" if needed == 0 else "-" if needed is None else f"{needed} more")
        )
    return lines


def run(args: argparse.Namespace) -> int:
    """Carry out a rollout verb against the cluster."""
    from ..k8s.client import ApiServer
    from ..k8s.status import read_model_deployment, write_request

    api = ApiServer.from_environment(context=args.context)
    obj = read_model_deployment(api, args.namespace, args.name)
    if obj is None:
        print(f"ModelDeployment {args.namespace}/{args.name} not found", file=sys.stderr)
        return 1
    if args.command == "status":
        print(format_status(obj))
        return 0
    status = ModelDeploymentStatus.model_validate(obj.get("status") or {})
    action: Action = args.command
    if action == "promote" and not (args.revision or status.candidate_revision):
        print("nothing to promote: no candidate in status", file=sys.stderr)
        return 1
    req = build_request(
        action,
        status,
        full=getattr(args, "full", False),
        revision=getattr(args, "revision", None),
        who=_who(),
    )
    write_request(api, args.namespace, args.name, req)
    what = f" revision {req.revision}" if req.revision else ""
    print(f"{action}{what} requested for {args.namespace}/{args.name} (request {req.id})")
    return 0


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
