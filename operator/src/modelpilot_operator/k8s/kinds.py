"""The resource kinds the operator reads and writes, and where the API serves them."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.v1alpha1 import GROUP, PLURAL, VERSION


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of the collection, or of one object when ``name`` is given."""
        base = f"/api/{self.api_version}" if not self.group else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


MODEL_DEPLOYMENT = Kind(f"{GROUP}/{VERSION}", "ModelDeployment", PLURAL)
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
SERVICE = Kind("v1", "Service", "services")
POD = Kind("v1", "Pod", "pods")
EVENT = Kind("v1", "Event", "events")
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
PDB = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
VIRTUAL_SERVICE = Kind("networking.istio.io/v1", "VirtualService", "virtualservices")
DESTINATION_RULE = Kind("networking.istio.io/v1", "DestinationRule", "destinationrules")
HTTP_ROUTE = Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes")
# Read only: the Gateways an HTTPRoute attaches to and their classes' supported features.
GATEWAY = Kind("gateway.networking.k8s.io/v1", "Gateway", "gateways")
GATEWAY_CLASS = Kind("gateway.networking.k8s.io/v1", "GatewayClass", "gatewayclasses", False)
SERVICE_MONITOR = Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")
CRD = Kind(
    "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False
)

# Every kind the operator creates for a ModelDeployment (and prunes by label).
CHILD_KINDS: tuple[Kind, ...] = (
    DEPLOYMENT,
    SERVICE,
    HPA,
    PDB,
    VIRTUAL_SERVICE,
    DESTINATION_RULE,
    HTTP_ROUTE,
    SERVICE_MONITOR,
)
# Kinds from CRDs that may be missing: the CRD that serves each.
OPTIONAL_KINDS = {
    "VirtualService": "virtualservices.networking.istio.io",
    "DestinationRule": "destinationrules.networking.istio.io",
    "HTTPRoute": "httproutes.gateway.networking.k8s.io",
    "ServiceMonitor": "servicemonitors.monitoring.coreos.com",
}
BY_KIND = {
    k.kind: k for k in (*CHILD_KINDS, MODEL_DEPLOYMENT, POD, EVENT, CRD, GATEWAY, GATEWAY_CLASS)
}


def kind_of(obj: dict[str, object]) -> Kind:
    return BY_KIND[str(obj["kind"])]


LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
BY_KIND[LEASE.kind] = LEASE
