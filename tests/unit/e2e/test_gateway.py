"""Pure parts of the Gateway API data plane: Traefik's configuration, the Gateway it
programs, its RBAC, and the measurement of the split it enforces."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e2e.build import CachePaths
from e2e.cluster import (
    GATEWAY_CLASS,
    GATEWAY_CONTROLLER,
    GATEWAY_NAME,
    GATEWAY_NAMESPACE,
    TRAEFIK_USER,
    Cluster,
    Layout,
    Ports,
    conditions_true,
    gateway_manifests,
    traefik_config,
    traefik_env,
    traefik_rbac,
)
from e2e.traffic import (
    Sent,
    StepShare,
    answered_by,
    binomial_tolerance,
    match_headers,
    shares_per_step,
    weight_segments,
)
from modelpilot_operator.api.v1alpha1 import TrafficMatch


def _layout(index: int) -> Layout:
    return Layout(root=Path("/tmp/cluster-x"), ports=Ports.for_index(index))


# --- Traefik's configuration ----------------------------------------------------------------


def test_traefik_listens_on_loopback_ports_shifted_per_cluster() -> None:
    for index in (0, 5):
        config = yaml.safe_load(traefik_config(_layout(index)))
        eps = config["entryPoints"]
        assert eps["web"]["address"] == f"127.0.0.1:{18000 + 100 * index}"
        assert eps["traefik"]["address"] == f"127.0.0.1:{18081 + 100 * index}"
        assert config["ping"] == {"entryPoint": "traefik"}


def test_traefik_never_calls_home_and_runs_the_gateway_provider() -> None:
    config = yaml.safe_load(traefik_config(_layout(0)))
    assert config["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
    assert "kubernetesGateway" in config["providers"]
    # No other provider: only the Gateway API configures it.
    assert set(config["providers"]) == {"kubernetesGateway", "providersThrottleDuration"}
    assert config["accessLog"]["filePath"] == "/tmp/cluster-x/logs/traefik-access.log"


def test_the_gateway_listener_is_traefiks_web_entry_point() -> None:
    layout = _layout(5)
    docs = list(yaml.safe_load_all(gateway_manifests(layout)))
    kinds = {d["kind"]: d for d in docs}
    assert kinds["Namespace"]["metadata"]["name"] == GATEWAY_NAMESPACE
    assert kinds["GatewayClass"]["spec"]["controllerName"] == GATEWAY_CONTROLLER
    gw = kinds["Gateway"]
    assert gw["metadata"] == {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}
    assert gw["spec"]["gatewayClassName"] == GATEWAY_CLASS
    (listener,) = gw["spec"]["listeners"]
    web = yaml.safe_load(traefik_config(layout))["entryPoints"]["web"]["address"]
    # Traefik maps a listener to the entry point whose address ends in its port.
    assert web.endswith(f":{listener['port']}")
    assert listener["protocol"] == "HTTP"
    # HTTPRoutes of every ModelDeployment's namespace may attach.
    assert listener["allowedRoutes"] == {"namespaces": {"from": "All"}}


def test_traefik_rbac_reads_routes_and_writes_only_their_status() -> None:
    role, binding = yaml.safe_load_all(traefik_rbac())
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TRAEFIK_USER}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    writes = [r for r in role["rules"] if set(r["verbs"]) - {"get", "list", "watch"}]
    assert all(r["verbs"] == ["update"] for r in writes)
    assert all(res.endswith("/status") for r in writes for res in r["resources"])
    readable = {res for r in role["rules"] for res in r["resources"]}
    assert {"httproutes", "gateways", "gatewayclasses", "endpointslices", "services"} <= readable
    assert "httproutes/status" in {res for r in writes for res in r["resources"]}


def test_traefik_env_has_the_kubeconfig_and_no_proxy_or_in_cluster_identity() -> None:
    base = {
        "PATH": "/usr/bin",
        "HTTP_PROXY": "http://proxy:3128",
        "https_proxy": "http://proxy:3128",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBECONFIG": "/elsewhere",
    }
    env = traefik_env(base, Path("/tmp/cluster-x/traefik.kubeconfig"))
    assert env == {"PATH": "/usr/bin", "KUBECONFIG": "/tmp/cluster-x/traefik.kubeconfig"}


def test_conditions_must_be_true_for_the_current_generation() -> None:
    def gw(status: str, observed: int) -> dict[str, object]:
        conds = [
            {"type": t, "status": status, "observedGeneration": observed}
            for t in ("Accepted", "Programmed")
        ]
        return {"metadata": {"generation": 2}, "status": {"conditions": conds}}

    assert conditions_true(gw("True", 2), "Accepted", "Programmed")
    assert not conditions_true(gw("True", 1), "Accepted", "Programmed")
    assert not conditions_true(gw("False", 2), "Accepted", "Programmed")
    assert not conditions_true({"metadata": {}}, "Accepted")
    assert not conditions_true(None, "Accepted")


# --- the client's side --------------------------------------------------------------------------


def test_answers_and_failures_name_the_version() -> None:
    assert answered_by(b'{"model_name":"fraud","model_version":"v2","outputs":[]}') == "v2"
    assert answered_by(b'{"error":"injected fault","model_version":"v3"}') == "v3"
    # The gateway's own answers name none.
    assert answered_by(b"no available server") == ""
    assert answered_by(b'{"error":"x"}') == ""
    assert answered_by(b"[1]") == ""


def test_match_headers_satisfy_header_and_cookie_rules() -> None:
    assert match_headers([TrafficMatch(header="x-group", exact="beta")]) == {"x-group": "beta"}
    assert match_headers([TrafficMatch(header="x-group", prefix="be")]) == {"x-group": "bex"}
    assert match_headers([TrafficMatch(cookie="canary", regex="^yes$")]) == {"cookie": "canary=yes"}
    assert match_headers([]) == {}


# --- measuring the split ------------------------------------------------------------------------


def test_binomial_tolerance() -> None:
    # z standard deviations of the share, plus half a request.
    assert binomial_tolerance(0.25, 300, z=4) == pytest.approx(
        4 * (0.25 * 0.75 / 300) ** 0.5 + 0.5 / 300
    )
    # It narrows with more requests.
    assert binomial_tolerance(0.5, 1000) < binomial_tolerance(0.5, 100)
    # Weight 0 or 100: only the continuity half-request, so the share must be exact.
    assert binomial_tolerance(0.0, 200) == pytest.approx(0.5 / 200)
    assert binomial_tolerance(1.0, 200) == pytest.approx(0.5 / 200)
    assert binomial_tolerance(0.3, 0) == 1.0


def test_step_share_within_and_outside_the_band() -> None:
    ok = StepShare({"v1": 75, "v2": 25}, 0.0, 10.0, {"v1": 148, "v2": 52})
    assert ok.n == 200
    assert ok.share("v2") == pytest.approx(0.26)
    assert ok.within()
    skewed = StepShare({"v1": 75, "v2": 25}, 0.0, 10.0, {"v1": 100, "v2": 100})
    assert not skewed.within()
    # One request to a version at weight 0 is already outside.
    leak = StepShare({"v1": 100, "v2": 0}, 0.0, 10.0, {"v1": 199, "v2": 1})
    assert not leak.within()
    assert StepShare({"v1": 100, "v2": 0}, 0.0, 10.0, {"v1": 200}).within()
    stray = StepShare({"v1": 100}, 0.0, 10.0, {"v1": 199, "v3": 1})
    assert not stray.within()
    assert "v2 26.0% (weight 25%" in ok.describe()


def test_weight_segments_are_runs_of_equal_reads() -> None:
    reads = [
        (0.0, {"v1": 100}),
        (1.0, {"v1": 100}),
        (2.0, {"v1": 75, "v2": 25}),
        (3.0, {"v1": 75, "v2": 25}),
        (4.0, {"v1": 75, "v2": 25}),
        (5.0, {"v2": 100}),
    ]
    assert weight_segments(reads) == [
        ({"v1": 100}, 0.0, 1.0),
        ({"v1": 75, "v2": 25}, 2.0, 4.0),
        ({"v2": 100}, 5.0, 5.0),
    ]


def test_shares_per_step_count_only_weighted_answers_inside_the_window() -> None:
    reads = [(float(t), {"v1": 50, "v2": 50}) for t in range(11)]
    reads += [(float(t), {"v1": 100}) for t in range(11, 15)]
    sent = [
        # Inside the first window (2..10): 3 to v1, 1 to v2, one 503 of the gateway.
        Sent(3.0, "v1", 200, 0.01),
        Sent(4.0, "v1", 200, 0.01),
        Sent(5.0, "v2", 500, 0.01),
        Sent(6.0, "v1", 200, 0.01),
        Sent(6.5, "", 503, 0.0),
        # Left out: inside the guard, matched by an A/B rule, mirrored, never sent.
        Sent(1.0, "v2", 200, 0.01),
        Sent(7.0, "v2", 200, 0.01, matched=True),
        Sent(7.0, "v2", 200, 0.01, mirrored=True),
        Sent(8.0, "", 599, 0.0),
        # The second run's window (13..14).
        Sent(13.5, "v1", 200, 0.01),
    ]
    first, second = shares_per_step(sent, reads, guard=2.0)
    assert (first.start, first.end) == (2.0, 10.0)
    assert first.counts == {"v1": 3, "v2": 1}
    assert first.unattributed == 1
    assert second.weights == {"v1": 100}
    assert second.counts == {"v1": 1}


def test_without_traefik_up_says_so_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = Cluster(Layout(root=tmp_path / "cluster"), CachePaths(root=tmp_path / "cache"))
    assert cluster.start_gateway() is False
    assert "Traefik is not built" in capsys.readouterr().out
    assert cluster.processes == []
