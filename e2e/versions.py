"""Pinned versions of everything the local cluster is built from.

One place to bump a release: the cache folder is keyed by the Kubernetes version and
the build manifest records every other pin, so a change here triggers a rebuild of
exactly the parts that changed.
"""

from __future__ import annotations

from typing import Final

# Control plane, kube-proxy and kubectl, built from k8s.io/kubernetes with its staging modules
# replaced by their matching v0.X.Y releases.
KUBERNETES: Final = "v1.36.3"

# The etcd server release k8s.io/kubernetes v1.36.3 itself requires for its client.
ETCD: Final = "v3.6.8"

HELM: Final = "v3.21.4"

# Modules that carry the upstream CRDs the operator renders objects for.
ISTIO_API: Final = "v1.31.4"
GATEWAY_API: Final = "v1.6.3"
PROMETHEUS_OPERATOR: Final = "v0.85.0"

# Prometheus 3.16.0 (its Go module numbers v3.X.Y as v0.3XX.Y). Debian's package lacks
# Kubernetes service discovery, so it is built from the module like the rest.
PROMETHEUS: Final = "v0.316.0"

# Kubernetes networking plugins (bridge, host-local, loopback, portmap) for pod networks.
CNI_PLUGINS: Final = "v1.10.0"

# The Gateway API data plane: the newest v3.7 release the module proxy serves.
TRAEFIK: Final = "v3.7.13"

# The resource metrics API for HPAs (v0.8.0 is the approved release; newer ones exist).
METRICS_SERVER: Final = "v0.8.0"

# The Go toolchain to ask the module proxy for when the machine's Go is older than a
# module's `go` directive.
GO_TOOLCHAIN_FALLBACK: Final = "go1.26.8"
