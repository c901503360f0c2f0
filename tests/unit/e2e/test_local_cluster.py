"""Pure parts of the local cluster: go.mod parsing, image mapping, pod spec helpers."""

from __future__ import annotations

import pytest
import yaml

from e2e import images
from e2e.build import go_directive, parse_go_version, required_version, staging_modules
from e2e.cluster import METRICS_SERVER_USER, Ports, metrics_server_manifests
from e2e.pods import ConfigError, Mounts, expand, parse_quantity

GOMOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgo.etcd.io/etcd/client/v3 v3.6.8
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/streaming => ./staging/src/k8s.io/streaming
)
"""


def test_staging_modules_come_from_the_replace_block() -> None:
    assert staging_modules(GOMOD) == ["k8s.io/api", "k8s.io/client-go", "k8s.io/streaming"]
    assert go_directive(GOMOD) == "1.26.0"
    assert required_version(GOMOD, "go.etcd.io/etcd/client/v3") == "v3.6.8"


def test_go_versions_compare_numerically() -> None:
    assert parse_go_version("go1.26.8") > parse_go_version("go1.26")
    assert parse_go_version("go1.9") < parse_go_version("go1.26.0")


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("modelpilot/runtime", "modelpilot/runtime"),
        ("modelpilot/runtime:0.1.0", "modelpilot/runtime"),
        ("ghcr.io/acme/modelpilot/runtime:0.1@sha256:abc", "acme/modelpilot/runtime"),
        ("localhost:5000/modelpilot/testserver", "modelpilot/testserver"),
        ("nginx", "nginx"),
    ],
)
def test_image_repository_drops_registry_tag_and_digest(image: str, repository: str) -> None:
    assert images.repository(image) == repository


def test_only_known_images_map_to_commands() -> None:
    assert images.lookup("registry.example.com/modelpilot/testserver:1") is not None
    assert images.lookup("nginx:1.27") is None
    assert images.lookup("evil/modelpilot/testserverx") is None


def test_mount_paths_are_rewritten_only_as_whole_components() -> None:
    m = Mounts()
    m.add("/work", "/L/work")
    m.add("/etc/config", "/L/config")
    assert m.rewrite("cat /etc/config/a > /work/b") == "cat /L/config/a > /L/work/b"
    assert m.rewrite("--dir=/work/x") == "--dir=/L/work/x"
    assert m.rewrite("PATH=/usr/bin:/work/bin") == "PATH=/usr/bin:/L/work/bin"
    assert m.rewrite("/workshop") == "/workshop"
    assert m.rewrite("a/work") == "a/work"


def test_variable_expansion_follows_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"


@pytest.mark.parametrize(
    ("text", "value"),
    [("250m", 0.25), ("2", 2.0), ("1Gi", 2.0**30), ("1k", 1000.0), ("1e3", 1000.0)],
)
def test_quantities(text: str, value: float) -> None:
    assert parse_quantity(text) == value


def test_bad_quantity_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_quantity("4 GB")


def test_metrics_server_is_found_through_its_endpointslice() -> None:
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all(metrics_server_manifests("10.244.48.1", 14743, "Q0E="))
    }
    service = docs[("Service", "metrics-server")]
    assert "selector" not in service["spec"]  # nothing would select a host process
    (port,) = service["spec"]["ports"]
    eps = docs[("EndpointSlice", "metrics-server-node")]
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "metrics-server"
    # Not the endpointslice controller's: it would take the slice away again.
    assert eps["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] != (
        "endpointslice-controller.k8s.io"
    )
    assert eps["endpoints"][0]["addresses"] == ["10.244.48.1"]
    assert eps["ports"] == [{"name": port["name"], "port": 14743, "protocol": "TCP"}]
    api = docs[("APIService", "v1beta1.metrics.k8s.io")]["spec"]
    assert api["service"] == {"name": "metrics-server", "namespace": "kube-system", "port": 443}
    assert api["caBundle"] == "Q0E="
    assert "insecureSkipTLSVerify" not in api
    # The upstream RBAC, bound to the ServiceAccount whose name its certificate carries.
    subjects = [
        s for (kind, _), d in docs.items() if kind.endswith("Binding") for s in d["subjects"]
    ]
    assert len(subjects) == 3
    assert all(
        f"system:serviceaccount:{s['namespace']}:{s['name']}" == METRICS_SERVER_USER
        for s in subjects
    )


def test_node_ports_move_with_the_cluster_index() -> None:
    assert Ports.for_index(3).kubelet == Ports().kubelet + 300
    assert Ports.for_index(3).metrics_server == Ports().metrics_server + 300
    values = [v for i in range(10) for v in vars(Ports.for_index(i)).values()]
    assert len(values) == len(set(values))
