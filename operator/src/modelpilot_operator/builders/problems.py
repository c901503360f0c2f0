"""Problems in a valid spec that only the operator can see, each with what to change.

Admission (CEL and the schema) rejects what is wrong in the spec itself; these depend on the
cluster or on what the bundled runtime can do. While any is present the operator applies
nothing for the ModelDeployment, so what already serves keeps serving.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ..api.v1alpha1 import ModelDeployment

# What `modelpilot-runtime fetch` can read; the API also accepts gs:// for other runtimes.
FETCHABLE_SCHEMES = ("s3://", "http://", "https://", "file://", "pvc://", "/")
# Every model.format the API admits (onnx, torchserve) is one the bundled runtime serves.

ROUTE_KINDS = {"istio": ("VirtualService", "DestinationRule"), "gatewayApi": ("HTTPRoute",)}
ROUTE_CRDS = {
    "VirtualService": "virtualservices.networking.istio.io",
    "DestinationRule": "destinationrules.networking.istio.io",
    "HTTPRoute": "httproutes.gateway.networking.k8s.io",
}


@dataclass(frozen=True)
class Problem:
    """A reason (CamelCase, for the condition and the Event) and a message for the user."""

    reason: str
    message: str


def find_problems(md: ModelDeployment, installed_kinds: Collection[str]) -> list[Problem]:
    """Everything that keeps the operator from serving ``md`` on this cluster."""
    out: list[Problem] = []
    for v in md.spec.versions:
        uri = v.model.storage_uri
        if not uri.startswith(FETCHABLE_SCHEMES):
            scheme = uri.split("://", 1)[0]
            out.append(
                Problem(
                    "UnsupportedStorage",
                    f"version {v.name}: storageUri {uri} uses {scheme}://, which the runtime "
                    "cannot fetch; use s3:// (for Google Cloud Storage, its S3-compatible "
                    "endpoint https://storage.googleapis.com as AWS_ENDPOINT_URL in the "
                    "credentials Secret), http(s)://, file://, pvc://<claim>/<path> or a path",
                )
            )
    router = md.spec.routing.router
    missing = [k for k in ROUTE_KINDS.get(router, ()) if k not in installed_kinds]
    if missing:
        crds = ", ".join(ROUTE_CRDS[k] for k in missing)
        out.append(
            Problem(
                "RouteCRDMissing",
                f"spec.routing.router is {router} but the cluster lacks the CRD(s) {crds}; "
                "install them, or set spec.routing.router to "
                + ("gatewayApi or none" if router == "istio" else "istio or none"),
            )
        )
    return out
