"""The runtime metric contract (see the architecture notes): names and labels are fixed,
because the operator's analysis queries and the dashboards read exactly these.

Every metric has the prefix `modelpilot_` and the labels `model` and `version`, plus only
low-cardinality others. The `code` label holds HTTP status codes for every protocol (gRPC
status codes are mapped to their HTTP equivalents), so one PromQL error-rate query covers
HTTP, gRPC and TF-Serving traffic.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelpilot_runtime import __version__

PREFIX = "modelpilot_"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: 100 µs to 30 s, dense where ONNX models on CPU and GPU usually answer.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Protocol label values.
HTTP_V2 = "v2-http"
GRPC_V2 = "v2-grpc"
TF_REST = "tfserving-rest"

# The names every consumer relies on, pinned by a test.
CONTRACT = (
    "modelpilot_inference_requests_total",
    "modelpilot_inference_request_duration_seconds",
    "modelpilot_inference_queue_duration_seconds",
    "modelpilot_inference_compute_duration_seconds",
    "modelpilot_inference_batch_size",
    "modelpilot_inference_pending_requests",
    "modelpilot_inference_rejected_total",
    "modelpilot_model_ready",
    "modelpilot_model_load_duration_seconds",
    "modelpilot_prediction_class_total",
    "modelpilot_cache_requests_total",
    "modelpilot_build_info",
)

UNKNOWN_MODEL = "_unknown"


class Metrics:
    """All runtime metrics in one registry (one per server, so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The *_created series double the scrape size and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        mv = ("model", "version")
        self.requests = Counter(
            PREFIX + "inference_requests",
            "Inference requests answered, by protocol and HTTP-equivalent status code.",
            (*mv, "protocol", "code"),
            registry=r,
        )
        self.request_duration = Histogram(
            PREFIX + "inference_request_duration_seconds",
            "Time from a request's arrival to its answer, in seconds.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            PREFIX + "inference_queue_duration_seconds",
            "Time a request waited for its batch to start, in seconds.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            PREFIX + "inference_compute_duration_seconds",
            "Time the model ran for a batch, in seconds.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            PREFIX + "inference_batch_size",
            "Requests run together in one model execution.",
            mv,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            PREFIX + "inference_pending_requests",
            "Requests queued or running.",
            mv,
            registry=r,
        )
        self.rejected = Counter(
            PREFIX + "inference_rejected",
            "Requests turned away: queue_full, timeout, not_ready, shutdown.",
            (*mv, "reason"),
            registry=r,
        )
        self.model_ready = Gauge(
            PREFIX + "model_ready",
            "1 when the version serves, 0 while loading, draining or after a failed load.",
            (*mv, "provider"),
            registry=r,
        )
        self.load_duration = Gauge(
            PREFIX + "model_load_duration_seconds",
            "Seconds the last load of the version took, by stage (load, warmup).",
            (*mv, "stage"),
            registry=r,
        )
        self.prediction_class = Counter(
            PREFIX + "prediction_class",
            "Predicted classes (argmax of a classification output), bounded in number.",
            (*mv, "class"),
            registry=r,
        )
        self.cache_requests = Counter(
            PREFIX + "cache_requests",
            "Result cache lookups by result (hit, miss).",
            (*mv, "result"),
            registry=r,
        )
        self.build_info = Gauge(
            PREFIX + "build_info",
            "Always 1; the labels describe the build.",
            ("version", "onnxruntime", "python"),
            registry=r,
        )
        self.build_info.labels(__version__, _onnxruntime_version(), platform.python_version()).set(
            1
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def for_version(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(
            request_duration=self.request_duration.labels(model, version),
            queue_duration=self.queue_duration.labels(model, version),
            compute_duration=self.compute_duration.labels(model, version),
            batch_size=self.batch_size.labels(model, version),
            pending=self.pending.labels(model, version),
            cache_hit=self.cache_requests.labels(model, version, "hit"),
            cache_miss=self.cache_requests.labels(model, version, "miss"),
        )


@dataclass(slots=True)
class VersionMetrics:
    """One version's metric children, bound once so the request path skips label lookups."""

    request_duration: Histogram
    queue_duration: Histogram
    compute_duration: Histogram
    batch_size: Histogram
    pending: Gauge
    cache_hit: Counter
    cache_miss: Counter


def _onnxruntime_version() -> str:
    try:
        import onnxruntime

        return str(onnxruntime.__version__)
    except ImportError:  # pragma: no cover - the runtime extra always installs it
        return "none"
