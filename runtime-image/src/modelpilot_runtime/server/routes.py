"""The HTTP API: Open Inference Protocol v2, TF-Serving REST, health and `/metrics`.

Paths (`{v}` parts are optional; without them the highest ready version answers):

    GET  /v2/health/live                      200 while the process runs
    GET  /v2/health/ready                     200 once every model serves; 503 while loading
                                              or shutting down
    GET  /v2                                  server metadata
    GET  /v2/models/{m}[/versions/{v}]        model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready  200 ready, 503 not ready, 404 unknown
    GET  /v2/models/{m}[/versions/{v}]/config Triton-style model configuration
    POST /v2/models/{m}[/versions/{v}]/infer  inference (JSON or binary tensor data)
    GET  /v2/repository/index (or POST)       every version with its state and failure reason
    GET  /v1/models/{m}[/versions/{v}]        TF-Serving model status
    GET  /v1/models/{m}[/versions/{v}]/metadata
    POST /v1/models/{m}[/versions/{v}]:predict
    GET  /metrics                             Prometheus
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from modelpilot_runtime import __version__
from modelpilot_runtime.config import version_sort_key
from modelpilot_runtime.errors import BackendError, InferenceError, RejectedError
from modelpilot_runtime.metrics import HTTP_V2, TF_REST, UNKNOWN_MODEL, Metrics
from modelpilot_runtime.repository.model import ServedVersion
from modelpilot_runtime.server import tfserving, v2
from modelpilot_runtime.server.httpserver import Request, Response

if TYPE_CHECKING:
    from modelpilot_runtime.repository.repository import ModelRepository

log = logging.getLogger(__name__)

SERVER_NAME = "modelpilot-runtime"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
BINARY = b"application/octet-stream"
TEXT = b"text/plain; charset=utf-8"

TRITON_TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}  # fmt: skip


def _json(status: int, doc: Any) -> Response:
    return Response(status, orjson.dumps(doc))


OK_TRUE = Response(200, b"")


def _int_or_zero(value: bytes) -> int:
    """A header's number for a size check (v2.decode refuses a malformed one with 400)."""
    return int(value) if value.isdigit() and len(value) <= 18 else 0


def as_inference_error(exc: BaseException, model: str) -> InferenceError:
    """Any exception of a request as the error to answer with: an unexpected one is the
    server's fault, a 500, logged with its traceback."""
    if isinstance(exc, InferenceError):
        return exc
    log.error("%s: unexpected error answering a request", model, exc_info=exc)
    return BackendError(f"internal error: {type(exc).__name__}: {exc}")


class Outcomes:
    """The one place where inference requests are counted: every request once, with the code
    it was answered with, on every protocol.

    Rejections (429/503: a full queue, a timeout, a model not ready, shutdown) are counted in
    `inference_requests_total` with their code and in `inference_rejected_total`, but kept out
    of `inference_request_duration_seconds`: their durations are not service times, and a
    version shedding load must not look faster for it.
    """

    def __init__(self, metrics: Metrics, repository: ModelRepository) -> None:
        self.metrics = metrics
        self.repository = repository
        self._children: dict[tuple[str, str, str, int], Any] = {}

    def done(
        self, served: ServedVersion | None, model: str, protocol: str, code: int, started: float
    ) -> None:
        self._count(served, model, protocol, code, observe=True, started=started)

    def _count(
        self,
        served: ServedVersion | None,
        model: str,
        protocol: str,
        code: int,
        observe: bool,
        started: float,
    ) -> None:
        if served is not None:
            key = (served.model, served.version, protocol, code)
            if observe:
                served.vm.request_duration.observe(time.perf_counter() - started)
        else:
            # Only names the repository knows become label values: clients cannot grow the series.
            key = (model if model in self.repository.models else UNKNOWN_MODEL, "", protocol, code)
        child = self._children.get(key)
        if child is None:
            child = self.metrics.requests.labels(key[0], key[1], protocol, str(code))
            self._children[key] = child
        child.inc()

    def failed(
        self,
        exc: BaseException,
        served: ServedVersion | None,
        model: str,
        protocol: str,
        started: float,
    ) -> InferenceError:
        """Count a failed request; the error to answer with (see `as_inference_error`)."""
        error = as_inference_error(exc, model)
        rejected = isinstance(error, RejectedError)
        if isinstance(error, RejectedError):
            labels = (
                (served.model, served.version)
                if served
                else (model if model in self.repository.models else UNKNOWN_MODEL, "")
            )
            self.metrics.rejected.labels(*labels, error.reason).inc()
        elif error.status >= 500:
            log.warning("%s: %s", model, error.message)
        self._count(served, model, protocol, error.status, observe=not rejected, started=started)
        return error


class HttpApi:
    def __init__(self, runtime: RuntimeState, max_json_bytes: int = 16 * 1024 * 1024) -> None:
        self.rt = runtime
        # A JSON body takes about 13 times its size in memory once parsed into Python
        # objects: JSON requests get a lower limit than binary ones (--max-body-bytes).
        self.max_json_bytes = max_json_bytes
        self.repo = runtime.repository
        self.metrics = runtime.metrics
        self.outcomes = runtime.outcomes
        self.fixed: dict[tuple[bytes, str], Callable[[Request], Response]] = {
            (b"GET", "/v2/health/live"): lambda r: OK_TRUE,
            (b"GET", "/v2/health/ready"): self._server_ready,
            (b"GET", "/v2"): self._server_metadata,
            (b"GET", "/v2/repository/index"): self._index,
            (b"POST", "/v2/repository/index"): self._index,
            (b"GET", "/metrics"): self._metrics,
        }
        self.fixed_paths = {path for _, path in self.fixed}

    def __call__(self, req: Request) -> Response | Awaitable[Response]:
        path = req.path
        if path.startswith("/v2/models/"):
            return self._v2_model(req, path[len("/v2/models/") :])
        if path.startswith("/v1/models/"):
            return self._tfs(req, path[len("/v1/models/") :])
        handler = self.fixed.get((req.method, path))
        if handler is not None:
            return handler(req)
        if path in self.fixed_paths:
            return Response.error(405, f"method {req.method.decode()} is not allowed on {path}")
        return Response.error(404, f"no such endpoint: {path}")

    # -- server-wide -------------------------------------------------------------------------

    def _server_ready(self, req: Request) -> Response:
        if self.rt.ready:
            return OK_TRUE
        return Response.error(
            503, "shutting down" if self.rt.draining else "models are not ready yet"
        )

    def _server_metadata(self, req: Request) -> Response:
        return _json(200, {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    def _index(self, req: Request) -> Response:
        return _json(200, self.repo.index())

    def _metrics(self, req: Request) -> Response:
        from modelpilot_runtime.metrics import CONTENT_TYPE

        return Response(200, self.metrics.render(), CONTENT_TYPE.encode())

    # -- v2 per model ------------------------------------------------------------------------

    def _v2_model(self, req: Request, rest: str) -> Response | Awaitable[Response]:
        parts = rest.split("/")
        name = unquote(parts[0]) if "%" in parts[0] else parts[0]
        version: str | None = None
        tail = parts[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version = unquote(tail[1])
            tail = tail[2:]
            if not version:
                # Not the default version: a client that meant one must not get another.
                return Response.error(404, "empty version in the path")
        if not name:
            return Response.error(404, "no model name in the path")
        action = tail[0] if len(tail) == 1 else ("" if not tail else None)
        if action == "infer":
            if req.method != b"POST":
                return Response.error(405, "infer takes POST")
            return self._v2_infer(req, name, version)
        if req.method != b"GET":
            return Response.error(405, f"method {req.method.decode()} is not allowed here")
        if action == "":
            return self._v2_metadata(name, version)
        if action == "ready":
            return self._v2_ready(name, version)
        if action == "config":
            return self._v2_config(name, version)
        return Response.error(404, f"no such endpoint: {req.path}")

    def _v2_metadata(self, name: str, version: str | None) -> Response:
        try:
            served = self.repo.get(name, version)
        except InferenceError as exc:
            return Response.error(exc.status, exc.message)
        meta = served.metadata()
        if version is None:
            meta["versions"] = sorted(
                (v for v, s in self.repo.models.get(name, {}).items() if s.ready),
                key=version_sort_key,
            )
        return _json(200, meta)

    def _v2_ready(self, name: str, version: str | None) -> Response:
        try:
            self.repo.get(name, version)
        except InferenceError as exc:
            return Response.error(exc.status, exc.message)
        return OK_TRUE

    def _v2_config(self, name: str, version: str | None) -> Response:
        try:
            served = self.repo.get(name, version)
        except InferenceError as exc:
            return Response.error(exc.status, exc.message)
        batching = served.config.batching
        batched = batching.enabled and served.info is not None and served.info.batchable

        def tensors(specs: list[Any]) -> list[dict[str, Any]]:
            return [
                {
                    "name": s.name,
                    "data_type": TRITON_TYPES[s.datatype],
                    "dims": list(s.shape[1:] if batched else s.shape),
                }
                for s in specs
            ]

        return _json(
            200,
            {
                "name": name,
                "platform": "onnxruntime_onnx",
                "backend": "onnxruntime",
                # 0 when the server does not batch: dims then include the batch dimension
                # (-1), as Triton reads it; any batch size is taken.
                "max_batch_size": batching.max_batch_size if batched else 0,
                "input": tensors(served.input_specs),
                "output": tensors(served.output_specs),
            },
        )

    def _v2_infer(
        self, req: Request, name: str, version: str | None
    ) -> Response | Awaitable[Response]:
        served: ServedVersion | None = None
        try:
            served = self.repo.get(name, version)
            header_length = req.headers.get(b"inference-header-content-length")
            self._check_json_size(
                len(req.body) if header_length is None else _int_or_zero(header_length)
            )
            parsed = v2.decode(req.body, header_length)
            if served.runs_now():
                results = served.infer_now(parsed.inputs, parsed.outputs)
                return self._v2_answer(served, parsed, results, req.started)
        except Exception as exc:
            return self._failed(exc, served, name, HTTP_V2, req.started)
        return self._v2_infer_async(served, parsed, req.started)

    async def _v2_infer_async(
        self, served: ServedVersion, parsed: v2.InferRequest, started: float
    ) -> Response:
        try:
            results = await served.infer(parsed.inputs, parsed.outputs)
            return self._v2_answer(served, parsed, results, started)
        except Exception as exc:
            return self._failed(exc, served, served.model, HTTP_V2, started)

    def _check_json_size(self, size: int) -> None:
        if size > self.max_json_bytes:
            raise InferenceError(
                f"JSON of {size} bytes is over the {self.max_json_bytes} byte limit for JSON "
                "(--max-json-bytes); send large tensors as binary data "
                "(Inference-Header-Content-Length)",
                413,
            )

    def _failed(
        self,
        exc: Exception,
        served: ServedVersion | None,
        model: str,
        protocol: str,
        started: float,
    ) -> Response:
        error = self.outcomes.failed(exc, served, model, protocol, started)
        if served is not None and protocol == HTTP_V2:
            # Named like a success: behind a traffic split, the client learns which
            # version failed.
            doc = {"error": error.message, "model_name": served.model}
            return _json(error.status, {**doc, "model_version": served.version})
        return Response.error(error.status, error.message)

    def _v2_answer(
        self,
        served: ServedVersion,
        parsed: v2.InferRequest,
        results: dict[str, Any],
        started: float,
    ) -> Response:
        # Encoded before it is counted: an encoding failure is counted once, as its 500.
        body, header_length = v2.encode(served.model, served.version, parsed, results)
        self.outcomes.done(served, served.model, HTTP_V2, 200, started)
        if header_length is None:
            return Response(200, body)
        return Response(
            200, body, BINARY, [(b"inference-header-content-length", str(header_length).encode())]
        )

    # -- TF-Serving REST ---------------------------------------------------------------------

    def _tfs(self, req: Request, rest: str) -> Response | Awaitable[Response]:
        verb = ""
        if ":" in rest:
            rest, _, verb = rest.rpartition(":")
        parts = rest.split("/")
        name = unquote(parts[0])
        version: str | None = None
        tail = parts[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version = unquote(tail[1])
            tail = tail[2:]
            if not version:
                return Response.error(404, "empty version in the path")
        if verb:
            if verb != "predict" or tail:
                return Response.error(
                    404, f"unsupported TF-Serving method {verb!r}; this server has :predict"
                )
            if req.method != b"POST":
                return Response.error(405, ":predict takes POST")
            return self._tfs_predict(req, name, version)
        if req.method != b"GET":
            return Response.error(405, f"method {req.method.decode()} is not allowed here")
        if not tail:
            return self._tfs_status(name, version)
        if tail == ["metadata"]:
            return self._tfs_metadata(name, version)
        return Response.error(404, f"no such endpoint: {req.path}")

    def _tfs_status(self, name: str, version: str | None) -> Response:
        versions = self.repo.models.get(name)
        if not versions:
            return Response.error(404, f"unknown model {name!r}")
        chosen = (
            [versions[version]]
            if version in versions
            else []
            if version
            else list(versions.values())
        )
        if version and not chosen:
            return Response.error(404, f"model {name!r} has no version {version!r}")
        states = {
            "READY": "AVAILABLE",
            "LOADING": "LOADING",
            "UNLOADING": "UNLOADING",
            "FAILED": "END",
        }
        return _json(
            200,
            {
                "model_version_status": [
                    {
                        "version": v.version,
                        "state": states.get(v.state, "END"),
                        "status": {
                            "error_code": "UNKNOWN" if v.reason else "OK",
                            "error_message": v.reason,
                        },
                    }
                    for v in chosen
                ]
            },
        )

    def _tfs_metadata(self, name: str, version: str | None) -> Response:
        try:
            served = self.repo.get(name, version)
        except InferenceError as exc:
            return Response.error(exc.status, exc.message)

        def sig(specs: list[Any]) -> dict[str, Any]:
            return {
                s.name: {
                    "name": s.name,
                    "dtype": s.datatype,
                    "tensor_shape": {"dim": [{"size": d} for d in s.shape]},
                }
                for s in specs
            }

        return _json(
            200,
            {
                "model_spec": {
                    "name": name,
                    "version": served.version,
                    "signature_name": "serving_default",
                },
                "metadata": {
                    "signature_def": {
                        "signature_def": {
                            "serving_default": {
                                "inputs": sig(served.input_specs),
                                "outputs": sig(served.output_specs),
                                "method_name": "tensorflow/serving/predict",
                            }
                        }
                    }
                },
            },
        )

    def _tfs_predict(
        self, req: Request, name: str, version: str | None
    ) -> Response | Awaitable[Response]:
        served: ServedVersion | None = None
        try:
            served = self.repo.get(name, version)
            self._check_json_size(len(req.body))
            inputs, rows_format = tfserving.decode(req.body, served.input_specs)
            if served.runs_now():
                results = served.infer_now(inputs, None)
                body = tfserving.encode(results, rows_format)
                self.outcomes.done(served, name, TF_REST, 200, req.started)
                return Response(200, body)
        except Exception as exc:
            return self._failed(exc, served, name, TF_REST, req.started)
        return self._tfs_predict_async(served, inputs, rows_format, req.started)

    async def _tfs_predict_async(
        self, served: ServedVersion, inputs: dict[str, Any], rows_format: bool, started: float
    ) -> Response:
        try:
            results = await served.infer(inputs, None)
            body = tfserving.encode(results, rows_format)
        except Exception as exc:
            return self._failed(exc, served, served.model, TF_REST, started)
        self.outcomes.done(served, served.model, TF_REST, 200, started)
        return Response(200, body)


class RuntimeState:
    """What the protocol front ends share: the repository, metrics and the shutdown flag."""

    def __init__(self, repository: ModelRepository, metrics: Metrics) -> None:
        self.repository = repository
        self.metrics = metrics
        self.outcomes = Outcomes(metrics, repository)
        self.draining = False

    @property
    def ready(self) -> bool:
        return not self.draining and self.repository.ready
