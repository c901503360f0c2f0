"""Per version: the Deployment of the runtime, its Service, HPA and PodDisruptionBudget.

The Deployment's pods fetch the model in an init container (``modelpilot-runtime fetch``)
into an emptyDir and serve it with ``modelpilot-runtime serve``; the root filesystem is
read-only, so every path the runtime writes to is an emptyDir.
"""

from __future__ import annotations

from typing import Any

from ..api.v1alpha1 import ModelDeployment, ModelVersion, parse_duration, version_revision
from .meta import (
    ANNOTATION_REVISION,
    GRPC_PORT,
    HTTP_PORT,
    INFLIGHT_METRIC,
    MODELS_DIR,
    BuildOptions,
    md_name,
    object_meta,
    version_labels,
    version_object_name,
    version_selector,
)
from .torchserve import (
    ANNOTATION_MODEL_CONFIG,
    config_init_container,
    config_volume,
    is_torchserve,
    model_config_text,
)

PVC_MOUNT = "/mnt/model-source"
CACHE_DIR = "/var/cache/modelpilot"
# The runtime takes ``disable``; the API says ``disabled`` like the rest of Kubernetes.
_GRAPH_OPTIMIZATION = {
    "disabled": "disable",
    "basic": "basic",
    "extended": "extended",
    "all": "all",
}
_QUANTIZE = {"none": "none", "dynamicInt8": "dynamic_int8"}
# Autoscaled versions without explicit metrics scale on CPU, as KServe does by default.
DEFAULT_CPU_TARGET = 80
# Lets the runtime finish in-flight requests after it turns not-ready on SIGTERM.
DRAIN_SECONDS = 5
TERMINATION_GRACE_SECONDS = 30


def is_autoscaled(version: ModelVersion) -> bool:
    """An HPA owns the replicas when the bounds leave it room."""
    return version.scaling.max_replicas > version.scaling.min_replicas


def fixed_replicas(md: ModelDeployment, version: ModelVersion) -> int:
    """Replicas of a version that is not autoscaled (spec.replicas applies to the stable one)."""
    if version.name == md.spec.stable and md.spec.replicas is not None:
        return md.spec.replicas
    return version.scaling.min_replicas


def image_for(version: ModelVersion, options: BuildOptions) -> str:
    return version.runtime.image or options.default_image


def fetch_source(storage_uri: str) -> tuple[str, str | None]:
    """The URI the init container fetches, and the PVC to mount for a ``pvc://`` URI."""
    if storage_uri.startswith("pvc://"):
        claim, _, path = storage_uri[len("pvc://") :].partition("/")
        return f"{PVC_MOUNT}/{path}".rstrip("/"), claim
    return storage_uri, None


def _ms(duration: str) -> str:
    return f"{parse_duration(duration) * 1000:g}"


def runtime_args(version: ModelVersion) -> list[str]:
    """``modelpilot-runtime serve`` flags for the version's settings (the onnxruntime ones
    only for ONNX models: a TorchServe model's settings are in its config file)."""
    rt = version.runtime
    batching = rt.batching
    args = [
        "serve",
        "--model-repository",
        MODELS_DIR,
        "--http-port",
        str(HTTP_PORT),
        "--grpc-port",
        str(GRPC_PORT),
        "--cache-dir",
        CACHE_DIR,
        "--drain-seconds",
        str(DRAIN_SECONDS),
        "--poll-interval",
        "0",
    ]
    if not is_torchserve(version):
        args += [
            "--providers",
            ",".join(rt.execution_providers),
            "--graph-optimization",
            _GRAPH_OPTIMIZATION[rt.graph_optimization],
            "--intra-op-threads",
            str(rt.intra_op_threads),
            "--inter-op-threads",
            str(rt.inter_op_threads),
            "--quantize",
            _QUANTIZE[rt.quantization.mode],
        ]
    args += [
        "--max-batch-size",
        str(batching.max_batch_size if batching.enabled else 1),
        "--max-batch-delay-ms",
        _ms(batching.max_delay) if batching.enabled else "0",
        "--max-queue",
        str(batching.max_queue_size),
        "--request-timeout-ms",
        _ms(batching.timeout),
        "--warmup-runs",
        str(rt.warmup.iterations if rt.warmup.enabled else 0),
        "--cache-entries",
        str(rt.cache.max_entries if rt.cache.enabled else 0),
    ]
    return args


def fetch_args(md: ModelDeployment, version: ModelVersion) -> list[str]:
    """``modelpilot-runtime fetch`` into ``<models>/<model>/<version>``: the runtime serves
    that directory as version ``<version>``, the label its metrics carry."""
    uri, _ = fetch_source(version.model.storage_uri)
    args = ["fetch", uri, f"{MODELS_DIR}/{md_name(md)}/{version.name}"]
    if version.model.checksum:
        args += ["--sha256", version.model.checksum.removeprefix("sha256:")]
    return args


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _resources(version: ModelVersion) -> dict[str, Any]:
    res = version.resources
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    if res.gpu:
        requests["nvidia.com/gpu"] = str(res.gpu)
        limits["nvidia.com/gpu"] = str(res.gpu)
    return {"requests": requests, "limits": limits}


def _probe(path: str, period: int, failures: int, initial_delay: int = 0) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }
    if initial_delay:
        probe["initialDelaySeconds"] = initial_delay
    return probe


def build_deployment(
    md: ModelDeployment, version: ModelVersion, options: BuildOptions
) -> dict[str, Any]:
    """The runtime Deployment of one version; no replicas when an HPA scales it."""
    name = version_object_name(md, version.name)
    labels = version_labels(md, version.name)
    image = image_for(version, options)
    _, claim = fetch_source(version.model.storage_uri)
    secret = version.model.credentials_secret

    init_mounts: list[dict[str, Any]] = [
        {"name": "models", "mountPath": MODELS_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "models", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if claim is not None:
        init_mounts.append({"name": "model-source", "mountPath": PVC_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "model-source",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
        )

    fetch: dict[str, Any] = {
        "name": "fetch-model",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["modelpilot-runtime"],
        "args": fetch_args(md, version),
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": init_mounts,
    }
    if secret:
        # A missing Secret keeps the pod in CreateContainerConfigError, which the status
        # reports; the operator itself never reads Secrets.
        fetch["envFrom"] = [{"secretRef": {"name": secret}}]

    runtime: dict[str, Any] = {
        "name": "runtime",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["modelpilot-runtime"],
        "args": runtime_args(version),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "env": [{"name": e.name, "value": e.value} for e in version.runtime.env],
        "resources": _resources(version),
        # The model is loaded before the server reports ready: allow up to 10 minutes.
        "startupProbe": _probe("/v2/health/ready", period=5, failures=120),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=2),
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if not runtime["env"]:
        del runtime["env"]

    init_containers = [fetch]
    pod_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
        ANNOTATION_REVISION: version_revision(version),
    }
    if is_torchserve(version):
        init_containers.append(config_init_container(md, image, _container_security()))
        volumes.append(config_volume())
        pod_annotations[ANNOTATION_MODEL_CONFIG] = model_config_text(version)

    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "initContainers": init_containers,
        "containers": [runtime],
        "volumes": volumes,
    }
    if version.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(version.node_selector.items()))
    if version.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in version.tolerations
        ]

    spec: dict[str, Any] = {}
    if not is_autoscaled(version):
        spec["replicas"] = fixed_replicas(md, version)
    spec |= {
        "revisionHistoryLimit": 3,
        "selector": {"matchLabels": version_selector(md, version.name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": pod_annotations,
            },
            "spec": pod_spec,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(md, name, labels),
        "spec": spec,
    }


def _service_ports() -> list[dict[str, Any]]:
    return [
        {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
        {
            "name": "grpc",
            "port": GRPC_PORT,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "grpc",
        },
    ]


def build_version_service(md: ModelDeployment, version: ModelVersion) -> dict[str, Any]:
    """A ClusterIP Service for the pods of one version (route backends, metrics, tests)."""
    labels = version_labels(md, version.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(md, version_object_name(md, version.name), labels),
        "spec": {
            "type": "ClusterIP",
            "selector": version_selector(md, version.name),
            "ports": _service_ports(),
        },
    }


def build_hpa(md: ModelDeployment, version: ModelVersion) -> dict[str, Any] | None:
    """An autoscaling/v2 HPA when the version's replica bounds leave room, else None."""
    if not is_autoscaled(version):
        return None
    metrics: list[dict[str, Any]] = []
    targets = version.scaling.metrics or []
    if not targets:
        metrics.append(_resource_metric("cpu", DEFAULT_CPU_TARGET))
    for m in targets:
        if m.type in ("cpu", "memory"):
            metrics.append(_resource_metric(m.type, m.target))
        else:
            metrics.append(
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": INFLIGHT_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(m.target)},
                    },
                }
            )
    name = version_object_name(md, version.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(md, name, version_labels(md, version.name)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": version.scaling.min_replicas,
            "maxReplicas": version.scaling.max_replicas,
            "metrics": metrics,
        },
    }


def _resource_metric(resource: str, target: int) -> dict[str, Any]:
    return {
        "type": "Resource",
        "resource": {
            "name": resource,
            "target": {"type": "Utilization", "averageUtilization": target},
        },
    }


def build_pdb(md: ModelDeployment, version: ModelVersion) -> dict[str, Any] | None:
    """A PDB allowing one pod down at a time, when the version runs at least two pods."""
    least = version.scaling.min_replicas if is_autoscaled(version) else fixed_replicas(md, version)
    if least < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(
            md, version_object_name(md, version.name), version_labels(md, version.name)
        ),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": version_selector(md, version.name)},
        },
    }


def stable_service_ports() -> list[dict[str, Any]]:
    return _service_ports()
