"""PURE: the desired child objects (plain dicts) of a ModelDeployment, from its spec and status.

:func:`build_children` renders everything the operator applies for one ModelDeployment;
the per-kind builders live beside it, one module per concern.
"""

from __future__ import annotations

from typing import Any

from ..api.v1alpha1 import ModelDeployment
from .meta import (
    ANNOTATION_APPLIED,
    LABEL_MODEL,
    LABEL_VERSION,
    MANAGED_BY,
    BuildOptions,
    children_selector,
    md_name,
    md_namespace,
    version_object_name,
)
from .monitoring import build_service_monitor
from .problems import Problem, find_problems
from .routes import build_routes, build_stable_service, read_route
from .status import VersionObservation, build_status
from .traffic import Traffic, all_to, desired_traffic
from .workload import build_deployment, build_hpa, build_pdb, build_version_service

__all__ = [
    "ANNOTATION_APPLIED",
    "LABEL_MODEL",
    "LABEL_VERSION",
    "MANAGED_BY",
    "BuildOptions",
    "Problem",
    "Traffic",
    "VersionObservation",
    "all_to",
    "build_children",
    "build_routes",
    "build_status",
    "children_selector",
    "desired_traffic",
    "find_problems",
    "md_name",
    "md_namespace",
    "read_route",
    "version_object_name",
]


def build_children(
    md: ModelDeployment, traffic: Traffic, options: BuildOptions
) -> list[dict[str, Any]]:
    """Every child object of ``md``, workloads first and routes last, in a fixed order."""
    out: list[dict[str, Any]] = []
    for version in sorted(md.spec.versions, key=lambda v: v.name):
        out.append(build_deployment(md, version, options))
        out.append(build_version_service(md, version))
        for optional in (build_hpa(md, version), build_pdb(md, version)):
            if optional is not None:
                out.append(optional)
    out.append(build_stable_service(md))
    out += build_routes(md, traffic)
    if options.service_monitor:
        out.append(build_service_monitor(md))
    return out
