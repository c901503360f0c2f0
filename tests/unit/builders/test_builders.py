"""Builder behaviour, kind by kind, beyond the golden files."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from modelpilot_operator.api.v1alpha1 import (
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    TrafficMatch,
)
from modelpilot_operator.builders import (
    BuildOptions,
    Traffic,
    build_children,
    desired_traffic,
    find_problems,
    read_route,
)
from modelpilot_operator.builders.routes import build_http_route, build_virtual_service
from modelpilot_operator.builders.workload import build_deployment, build_hpa, build_pdb
from tests.api_cases import full, minimal, torchserve

from .cases import CASES, IMAGE, BuildCase, with_meta

ALL_KINDS = {"VirtualService", "DestinationRule", "HTTPRoute", "ServiceMonitor"}


def _md(obj: dict[str, Any]) -> ModelDeployment:
    return ModelDeployment.model_validate(with_meta(obj))


def _opts() -> Any:
    return CASES[0].options()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rendering_is_deterministic(case: BuildCase) -> None:
    md = case.md()
    traffic = desired_traffic(md.spec, md.status)
    assert build_children(md, traffic, case.options()) == build_children(
        case.md(), traffic, case.options()
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_children_are_owned_and_labelled(case: BuildCase) -> None:
    md = case.md()
    for obj in build_children(md, desired_traffic(md.spec, md.status), case.options()):
        meta = obj["metadata"]
        assert meta["namespace"] == md.metadata["namespace"]
        assert meta["ownerReferences"][0]["uid"] == md.metadata["uid"]
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelpilot"
        assert meta["labels"]["modelpilot.io/model"] == md.metadata["name"]
        assert len(meta["name"]) <= 63


def test_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    md = _md(full())
    v1, v2 = md.spec.versions
    assert "replicas" not in build_deployment(md, v1, _opts())["spec"]
    assert build_deployment(md, v2, _opts())["spec"]["replicas"] == 1
    assert build_hpa(md, v2) is None


def test_stable_replicas_come_from_the_scale_subresource() -> None:
    obj = minimal()
    obj["spec"]["replicas"] = 4
    md = _md(obj)
    dep = build_deployment(md, md.spec.versions[0], _opts())
    assert dep["spec"]["replicas"] == 4
    pdb = build_pdb(md, md.spec.versions[0])
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1


def test_single_replica_gets_no_pdb() -> None:
    md = _md(minimal())
    assert build_pdb(md, md.spec.versions[0]) is None


def test_hpa_without_metrics_scales_on_cpu() -> None:
    obj = minimal()
    obj["spec"]["versions"][0]["scaling"] = {"minReplicas": 1, "maxReplicas": 4}
    md = _md(obj)
    hpa = build_hpa(md, md.spec.versions[0])
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80},
            },
        }
    ]


def test_hpa_scales_on_memory_and_inflight_gauge() -> None:
    obj = minimal()
    obj["spec"]["versions"][0]["scaling"] = {
        "minReplicas": 2,
        "maxReplicas": 4,
        "metrics": [{"type": "memory", "target": 75}, {"type": "inflight", "target": 4}],
    }
    md = _md(obj)
    hpa = build_hpa(md, md.spec.versions[0])
    assert hpa is not None
    memory, inflight = hpa["spec"]["metrics"]
    assert memory["resource"]["name"] == "memory"
    # The runtime's gauge of requests queued or running (the metric contract).
    assert inflight["pods"]["metric"]["name"] == "modelpilot_inference_pending_requests"
    assert inflight["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}


def test_pod_is_locked_down() -> None:
    md = _md(full())
    pod = build_deployment(md, md.spec.versions[0], _opts())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        volumes = {v["name"] for v in pod["volumes"]}
        assert {m["name"] for m in c["volumeMounts"]} <= volumes


def test_torchserve_pod_reads_its_config_beside_the_fetched_mar() -> None:
    md = _md(torchserve())
    version = md.spec.versions[0]
    dep = build_deployment(md, version, BuildOptions(default_image=IMAGE))
    pod = dep["spec"]["template"]
    args = pod["spec"]["containers"][0]["args"]
    assert "--providers" not in args
    assert "--quantize" not in args
    assert args[args.index("--max-batch-size") + 1] == "8"
    fetch, config = pod["spec"]["initContainers"]
    assert fetch["args"][:3] == ["fetch", "s3://models/fraud-ts/1/", "/mnt/models/fraud/v1"]
    assert config["command"] == ["cp"]
    assert config["args"][1] == "/mnt/models/fraud/config.json"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "model-config")
    field = volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['modelpilot.io/model-config']"
    assert config["securityContext"]["readOnlyRootFilesystem"] is True


def test_torchserve_config_is_what_the_runtime_reads() -> None:
    """The contract between the two packages: the runtime parses what the operator renders."""
    from modelpilot_runtime.config import ModelConfig

    obj = torchserve()
    obj["spec"]["versions"][0]["runtime"]["torchserve"] |= {
        "workers": 2,
        "responseTimeout": "90s",
    }
    md = _md(obj)
    dep = build_deployment(md, md.spec.versions[0], BuildOptions(default_image=IMAGE))
    text = dep["spec"]["template"]["metadata"]["annotations"]["modelpilot.io/model-config"]
    config = ModelConfig.model_validate(json.loads(text))
    assert config.backend == "torchserve"
    assert [t.name for t in config.torchserve.inputs] == ["input"]
    assert config.torchserve.outputs[0].shape == [-1, 3]
    assert (config.torchserve.workers, config.torchserve.response_timeout_s) == (2, 90)


def test_onnx_pods_have_no_model_config() -> None:
    md = _md(minimal())
    dep = build_deployment(md, md.spec.versions[0], BuildOptions(default_image=IMAGE))
    pod = dep["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["fetch-model"]
    assert "modelpilot.io/model-config" not in pod["metadata"]["annotations"]


def test_runtime_image_of_the_version_wins() -> None:
    obj = minimal()
    obj["spec"]["versions"][0]["runtime"] = {"image": "registry.local/runtime:dev"}
    md = _md(obj)
    pod = build_deployment(md, md.spec.versions[0], _opts())["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {
        "registry.local/runtime:dev"
    }
    md2 = _md(minimal())
    pod2 = build_deployment(md2, md2.spec.versions[0], _opts())["spec"]["template"]["spec"]
    assert pod2["containers"][0]["image"] == IMAGE


def test_revision_annotation_changes_with_the_version() -> None:
    a = _md(minimal())
    obj = minimal()
    obj["spec"]["versions"][0]["runtime"] = {"batching": {"maxBatchSize": 16}}
    b = _md(obj)

    def rev(md: ModelDeployment) -> str:
        dep = build_deployment(md, md.spec.versions[0], _opts())
        return str(dep["spec"]["template"]["metadata"]["annotations"]["modelpilot.io/revision"])

    assert rev(a) != rev(b)


# -- traffic ----------------------------------------------------------------------------


def _spec(rollout: dict[str, Any] | None = None) -> ModelDeploymentSpec:
    obj = copy.deepcopy(full()["spec"])
    if rollout is None:
        del obj["rollout"]
    else:
        obj["rollout"] |= rollout
    return ModelDeploymentSpec.model_validate(obj)


def _status(**fields: Any) -> ModelDeploymentStatus:
    return ModelDeploymentStatus.model_validate(fields)


def test_no_rollout_sends_everything_to_stable() -> None:
    status = _status(desiredWeights={"v1": 50, "v2": 50})
    assert desired_traffic(_spec(), status) == Traffic(weights={"v1": 100})


def test_rollout_weights_come_from_status() -> None:
    status = _status(phase="Progressing", desiredWeights={"v1": 90, "v2": 10})
    assert desired_traffic(_spec({}), status).weights == {"v1": 90, "v2": 10}


@pytest.mark.parametrize(
    "weights",
    [{}, {"v1": 90, "v2": 20}, {"v1": 90, "gone": 10}],
    ids=["none", "not-100", "unknown-version"],
)
def test_unusable_weights_fall_back_to_stable(weights: dict[str, int]) -> None:
    status = _status(phase="Progressing", desiredWeights=weights)
    assert desired_traffic(_spec({}), status).weights == {"v1": 100}


def test_ab_match_is_active_only_while_the_rollout_runs() -> None:
    spec = _spec({"strategy": "abTest", "match": [{"header": "x-group", "exact": "beta"}]})
    started = {"stepStartedAt": "2026-12-03T06:00:00Z"}
    running = desired_traffic(
        spec, _status(phase="Progressing", desiredWeights={"v1": 100}, **started)
    )
    assert running.match_version == "v2"
    waiting = desired_traffic(
        spec, _status(phase="AwaitingPromotion", desiredWeights={"v1": 100}, step=0, **started)
    )
    assert waiting.match_version == "v2"
    done = desired_traffic(spec, _status(phase="RolledBack", desiredWeights={"v1": 100}))
    assert done.match_version is None


def test_ab_match_waits_for_the_step_to_start() -> None:
    # Until the candidate is ready the step does not start: matched users stay on stable
    # rather than meeting a version with no Ready endpoint.
    spec = _spec({"strategy": "abTest", "match": [{"header": "x-group", "exact": "beta"}]})
    pending = desired_traffic(spec, _status(phase="Progressing", desiredWeights={"v1": 100}))
    assert pending.match_version is None
    assert pending.match == ()


def test_shadow_mirrors_the_candidate() -> None:
    spec = _spec({"strategy": "shadow", "mirrorPercent": 30})
    t = desired_traffic(spec, _status(phase="Progressing", mirrorPercent=30))
    assert (t.mirror_version, t.mirror_percent, t.weights) == ("v2", 30, {"v1": 100})


_TRAFFICS = [
    Traffic(weights={"v1": 100}),
    Traffic(weights={"v1": 95, "v2": 5}),
    Traffic(weights={"v1": 0, "v2": 100}),
    Traffic(weights={"v1": 100}, mirror_version="v2", mirror_percent=25),
    Traffic(weights={"v1": 100}, mirror_version="v2", mirror_percent=100),
    Traffic(
        weights={"v1": 100},
        match_version="v2",
        match=(TrafficMatch(header="x-group", exact="beta"),),
    ),
]


@pytest.mark.parametrize("router", ["istio", "gatewayApi"])
@pytest.mark.parametrize("traffic", _TRAFFICS)
def test_route_reads_back_what_was_rendered(router: str, traffic: Traffic) -> None:
    obj = full()
    obj["spec"]["routing"] = {"router": router}
    md = _md(obj)
    route = (build_virtual_service if router == "istio" else build_http_route)(md, traffic)
    back = read_route(md, route)
    assert back is not None
    assert back.weights == traffic.weights
    assert (back.mirror_version, back.mirror_percent) == (
        traffic.mirror_version,
        traffic.mirror_percent,
    )
    assert back.match_version == traffic.match_version


def test_relative_gateway_weights_read_as_percent() -> None:
    md = _md(full())
    route = {
        "kind": "HTTPRoute",
        "spec": {
            "rules": [
                {
                    "name": "primary",
                    "backendRefs": [
                        {"name": "fraud-v1", "weight": 2},
                        {"name": "fraud-v2", "weight": 1},
                    ],
                }
            ]
        },
    }
    back = read_route(md, route)
    assert back is not None
    assert back.weights == {"v1": 67, "v2": 33}


def test_foreign_route_reads_as_none() -> None:
    md = _md(full())
    assert read_route(md, {"kind": "VirtualService", "spec": {"http": [{"route": []}]}}) is None


@pytest.mark.parametrize(
    ("match", "istio", "gateway"),
    [
        (
            {"header": "X-Group", "exact": "beta"},
            {"headers": {"x-group": {"exact": "beta"}}},
            {"type": "Exact", "name": "X-Group", "value": "beta"},
        ),
        (
            {"header": "x-group", "prefix": "be.ta"},
            {"headers": {"x-group": {"prefix": "be.ta"}}},
            {"type": "RegularExpression", "name": "x-group", "value": "^be\\.ta.*"},
        ),
        (
            {"cookie": "canary", "exact": "yes"},
            {"headers": {"cookie": {"regex": "^(.*?;\\s*)?canary=yes(;.*)?$"}}},
            {
                "type": "RegularExpression",
                "name": "Cookie",
                "value": "^(.*?;\\s*)?canary=yes(;.*)?$",
            },
        ),
    ],
)
def test_matches_render_for_both_routers(
    match: dict[str, str], istio: dict[str, Any], gateway: dict[str, Any]
) -> None:
    from modelpilot_operator.builders.routes import gateway_match, istio_match

    m = TrafficMatch.model_validate(match)
    assert istio_match(m) == istio
    assert gateway_match(m) == gateway


# -- problems ---------------------------------------------------------------------------


def test_a_clean_spec_has_no_problems() -> None:
    assert find_problems(_md(full()), ALL_KINDS) == []


def test_gs_is_reported_with_a_fix() -> None:
    obj = minimal()
    obj["spec"]["versions"][0]["model"] = {"storageUri": "gs://b/m"}
    problems = find_problems(_md(obj), ALL_KINDS)
    assert [p.reason for p in problems] == ["UnsupportedStorage"]
    assert "use s3://" in problems[0].message


def test_torchserve_is_served() -> None:
    assert find_problems(_md(torchserve()), ALL_KINDS) == []


@pytest.mark.parametrize(
    ("router", "missing", "crd"),
    [
        ("istio", {"DestinationRule", "HTTPRoute"}, "destinationrules.networking.istio.io"),
        ("gatewayApi", {"HTTPRoute"}, "httproutes.gateway.networking.k8s.io"),
    ],
)
def test_missing_route_crd(router: str, missing: set[str], crd: str) -> None:
    obj = minimal()
    obj["spec"]["routing"] = {"router": router}
    problems = find_problems(_md(obj), ALL_KINDS - missing)
    assert [p.reason for p in problems] == ["RouteCRDMissing"]
    assert crd in problems[0].message


def test_router_none_needs_no_crd() -> None:
    obj = minimal()
    obj["spec"]["routing"] = {"router": "none"}
    assert find_problems(_md(obj), set()) == []
