"""The runtime metric contract (see the architecture notes): names and labels are fixed,
because the operator's analysis queries and the dashboards read exactly these.

Every metric has the prefix `modelpilot_` and the labels `model` and `version`, plus only
low-cardinality others. The `code` label holds HTTP status codes for every protocol (gRPC
status codes are mapped to their HTTP equivalents), so one PromQL error-rate query covers
HTTP, gRPC and TF-Serving traffic.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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


class _Histogram:
    """One labelled histogram child: a bisect and two additions per observation, no lock.

    Only the event-loop thread observes (worker threads hand their timings back to it), so
    none of prometheus_client's per-bucket locking is needed on the request path.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Value:
    """A counter or gauge child."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _Family:
    """A labelled metric: children by label values, exported through a custom collector."""

    def __init__(
        self,
        kind: str,
        name: str,
        doc: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.kind = kind
        self.name = name
        self.doc = doc
        self.labelnames = labelnames
        self.buckets = buckets
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = _Histogram(self.buckets) if self.kind == "histogram" else _Value()
            self.children[values] = child
        return child

    def remove(self, *values: str) -> None:
        del self.children[values]

    def collect(self) -> Metric:
        if self.kind == "histogram":
            fam: Metric = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
            for values, h in list(self.children.items()):
                running, cumulative = 0, []
                for bound, count in zip((*h.bounds, float("inf")), h.counts, strict=True):
                    running += count
                    cumulative.append(
                        ("+Inf" if bound == float("inf") else repr(float(bound)), running)
                    )
                fam.add_metric(list(values), cumulative, h.sum)  # type: ignore[attr-defined]
            return fam
        family_type = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        name = self.name.removesuffix("_total") if self.kind == "counter" else self.name
        fam = family_type(name, self.doc, labels=self.labelnames)
        for values, v in list(self.children.items()):
            fam.add_metric(list(values), v.value)
        return fam


class _Collector(Collector):
    def __init__(self, families: list[_Family]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return [f.collect() for f in self.families]

    def describe(self) -> Iterable[Metric]:
        return []


class Metrics:
    """All runtime metrics in one registry (one per server, so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        mv = ("model", "version")
        p = PREFIX
        self.requests = _Family(
            "counter",
            p + "inference_requests_total",
            "Inference requests answered, by protocol and HTTP-equivalent status code.",
            (*mv, "protocol", "code"),
        )
        self.request_duration = _Family(
            "histogram",
            p + "inference_request_duration_seconds",
            "Time from a request's arrival to its answer, in seconds.",
            mv,
            LATENCY_BUCKETS,
        )
        self.queue_duration = _Family(
            "histogram",
            p + "inference_queue_duration_seconds",
            "Time a request waited for its batch to start, in seconds.",
            mv,
            LATENCY_BUCKETS,
        )
        self.compute_duration = _Family(
            "histogram",
            p + "inference_compute_duration_seconds",
            "Time the model ran for a batch, in seconds.",
            mv,
            LATENCY_BUCKETS,
        )
        self.batch_size = _Family(
            "histogram",
            p + "inference_batch_size",
            "Requests run together in one model execution.",
            mv,
            BATCH_BUCKETS,
        )
        self.pending = _Family(
            "gauge", p + "inference_pending_requests", "Requests queued or running.", mv
        )
        self.rejected = _Family(
            "counter",
            p + "inference_rejected_total",
            "Requests turned away: queue_full, timeout, not_ready, shutdown, worker_failed.",
            (*mv, "reason"),
        )
        self.model_ready = _Family(
            "gauge",
            p + "model_ready",
            "1 when the version serves, 0 while loading, draining or after a failed load.",
            (*mv, "provider"),
        )
        self.load_duration = _Family(
            "gauge",
            p + "model_load_duration_seconds",
            "Seconds the last load of the version took, by stage (load, warmup).",
            (*mv, "stage"),
        )
        self.prediction_class = _Family(
            "counter",
            p + "prediction_class_total",
            "Predicted classes (argmax of a classification output), bounded in number.",
            (*mv, "class"),
        )
        self.cache_requests = _Family(
            "counter",
            p + "cache_requests_total",
            "Result cache lookups by result (hit, miss).",
            (*mv, "result"),
        )
        self.build_info = _Family(
            "gauge",
            p + "build_info",
            "Always 1; the labels describe the build.",
            ("version", "onnxruntime", "python"),
        )
        self.build_info.labels(__version__, _onnxruntime_version(), platform.python_version()).set(
            1
        )
        families = [
            self.requests,
            self.request_duration,
            self.queue_duration,
            self.compute_duration,
            self.batch_size,
            self.pending,
            self.rejected,
            self.model_ready,
            self.load_duration,
            self.prediction_class,
            self.cache_requests,
            self.build_info,
        ]
        self.registry.register(_Collector(families))

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

    request_duration: _Histogram
    queue_duration: _Histogram
    compute_duration: _Histogram
    batch_size: _Histogram
    pending: _Value
    cache_hit: _Value
    cache_miss: _Value


def _onnxruntime_version() -> str:
    try:
        import onnxruntime

        return str(onnxruntime.__version__)
    except ImportError:  # pragma: no cover - the runtime extra always installs it
        return "none"
