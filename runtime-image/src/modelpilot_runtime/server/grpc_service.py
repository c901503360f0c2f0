"""Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`), sharing the event
loop, repository and schedulers with the HTTP server. The same servicers run on either
transport: the runtime's own HTTP/2 server (grpc_h2, the default), on which a model answered
inline is answered within the socket read (`ModelInferNow`), or grpc.aio (`--grpc-server
grpcio`).

Errors map to gRPC codes (400 INVALID_ARGUMENT, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED,
503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, 500 INTERNAL); the request metrics record the
HTTP-equivalent code. A client's deadline is honoured: a request still queued or running
when it passes is dropped (a queued one never runs) and counted as 504; a call the client
cancels is counted as 499. Messages over the
size limit are refused by gRPC itself before they are read whole. The standard health
service (`grpc.health.v1.Health`, see grpc_health) is served beside the inference service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from modelpilot_runtime import __version__
from modelpilot_runtime.config import version_sort_key
from modelpilot_runtime.errors import BadRequestError, InferenceError
from modelpilot_runtime.metrics import GRPC_V2
from modelpilot_runtime.repository.model import ServedVersion
from modelpilot_runtime.server.grpc_h2 import DEADLINE_MARGIN, Context, GrpcServer, Method
from modelpilot_runtime.server.grpc_health import SERVICE as HEALTH_SERVICE
from modelpilot_runtime.server.grpc_health import HealthService
from modelpilot_runtime.server.proto import inference_pb2 as pb
from modelpilot_runtime.server.proto import inference_pb2_grpc as pb_grpc
from modelpilot_runtime.server.routes import EXTENSIONS, SERVER_NAME, RuntimeState
from modelpilot_runtime.tensors import (
    Array,
    array_to_raw,
    check_shape,
    element_count,
    raw_to_array,
    v2_datatype_of,
    v2_dtype,
)

# A call cancelled with less than this left of its deadline counts as past its deadline (504),
# not cancelled (499): the client's deadline starts when it sends, the server's when it reads,
# so the client's expiry cancels the call slightly before the server's deadline, and before
# the server's own timer (DEADLINE_MARGIN) when the event loop runs late.
EXPIRY_SLACK = 0.1

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# The code counted for a call the client cancelled (nginx's 499: client closed request).
CLIENT_CLOSED = 499

CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _has_contents(tensor: Any) -> bool:
    return bool(tensor.HasField("contents")) and any(
        len(getattr(tensor.contents, f)) for f in set(CONTENTS_FIELD.values())
    )


def decode_inputs(request: Any) -> dict[str, Array]:
    inputs: dict[str, Array] = {}
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequestError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; give one per input"
        )
    for i, tensor in enumerate(request.inputs):
        where = f"input {tensor.name!r}"
        if tensor.name in inputs:
            raise BadRequestError(f"{where} is given twice")
        dtype = v2_dtype(tensor.datatype, where)
        shape = check_shape(list(tensor.shape), where)
        if raw:
            if _has_contents(tensor):
                raise BadRequestError(
                    f"{where}: has typed contents and the request has raw_input_contents; "
                    "give one or the other"
                )
            inputs[tensor.name] = raw_to_array(raw[i], dtype, shape, where)
            continue
        field = CONTENTS_FIELD.get(tensor.datatype)
        if field is None:
            raise BadRequestError(
                f"{where}: {tensor.datatype} data must come in raw_input_contents"
            )
        others = [
            f
            for f in set(CONTENTS_FIELD.values())
            if f != field and len(getattr(tensor.contents, f))
        ]
        if others:
            raise BadRequestError(
                f"{where}: {tensor.datatype} data goes in contents.{field}, not "
                f"{', '.join(sorted(others))}"
            )
        values = getattr(tensor.contents, field)
        count = element_count(shape)
        if len(values) != count:
            raise BadRequestError(
                f"{where}: contents.{field} has {len(values)} elements, "
                f"shape {list(shape)} needs {count}"
            )
        if dtype.kind == "O":
            arr = np.empty(count, dtype=object)
            arr[:] = list(values)
        elif dtype.kind in "iu" and dtype.itemsize < 4:
            # int_contents/uint_contents carry 32 bits: narrower types must be range-checked.
            wide = np.array(values, dtype=np.int64)
            info = np.iinfo(dtype)
            bad = np.flatnonzero((wide < info.min) | (wide > info.max))
            if bad.size:
                raise BadRequestError(
                    f"{where}: element {int(bad[0])} ({int(wide[bad[0]])}) is outside the "
                    f"range {info.min}..{info.max} of {tensor.datatype}"
                )
            arr = wide.astype(dtype)
        else:
            arr = np.array(values, dtype=dtype)
        inputs[tensor.name] = arr.reshape(shape)
    if not inputs:
        raise BadRequestError("the request has no inputs")
    return inputs


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, runtime: RuntimeState) -> None:
        self.rt = runtime
        self.repo = runtime.repository
        self.outcomes = runtime.outcomes

    async def ServerLive(  # noqa: N802
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.rt.ready)

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        served = self.repo.find(request.name, request.version or None)
        if served is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {request.name!r} version {request.version!r}",
            )
        return pb.ModelReadyResponse(ready=served is not None and served.ready)

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        try:
            served = self.repo.get(request.name, request.version or None)
        except InferenceError as exc:
            await context.abort(CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
            raise  # unreachable: abort raises
        meta = served.metadata()
        if not request.version:
            meta["versions"] = sorted(
                (v for v, s in self.repo.models.get(request.name, {}).items() if s.ready),
                key=version_sort_key,
            )
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[
                tm(name=s.name, datatype=s.datatype, shape=list(s.shape))
                for s in served.input_specs
            ],
            outputs=[
                tm(name=s.name, datatype=s.datatype, shape=list(s.shape))
                for s in served.output_specs
            ],
        )

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        served: ServedVersion | None = None
        try:
            served = self.repo.get(request.model_name, request.model_version or None)
            inputs = decode_inputs(request)
            outputs = [o.name for o in request.outputs] or None
            remaining = context.time_remaining()
            if served.runs_now():
                results = served.infer_now(inputs, outputs)
            elif remaining is None or isinstance(context, Context):
                # No deadline, or the own transport's timer keeps it (see grpc_h2._expire).
                results = await served.infer(inputs, outputs)
            else:
                results = await _within(served.infer(inputs, outputs), remaining)
            response = _response(served, request.id, results)
        except asyncio.CancelledError:
            # The client cancelled the call or went away, or its deadline passed: the own
            # transport ends the call then (`context.expired`), grpc.aio cancels the handler
            # when the deadline passes just before ours. Still counted, once.
            remaining = context.time_remaining()
            gone = (
                InferenceError("the client's deadline passed", 504)
                if (remaining is not None and remaining <= EXPIRY_SLACK)
                or getattr(context, "expired", False)
                else InferenceError("the client cancelled the call", CLIENT_CLOSED)
            )
            self.outcomes.failed(gone, served, request.model_name, GRPC_V2, started)
            raise
        except Exception as exc:
            error = self.outcomes.failed(exc, served, request.model_name, GRPC_V2, started)
            await context.abort(CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message)
            raise  # unreachable: abort raises
        self.outcomes.done(served, served.model, GRPC_V2, 200, started)
        return response

    def ModelInferNow(  # noqa: N802
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse | None:
        """ModelInfer for a model answered inline (`served.runs_now()`: cheap, and unbatched
        or its batcher idle), called by the own transport within the socket read, without a
        task; None for every other call, which `ModelInfer` then takes whole (and counts)."""
        started = time.perf_counter()
        try:
            served = self.repo.get(request.model_name, request.model_version or None)
        except InferenceError:
            return None  # unknown or not ready: ModelInfer answers (and counts) it
        if not served.runs_now():
            return None
        try:
            inputs = decode_inputs(request)
            outputs = [o.name for o in request.outputs] or None
            response = _response(served, request.id, served.infer_now(inputs, outputs))
        except Exception as exc:
            error = self.outcomes.failed(exc, served, request.model_name, GRPC_V2, started)
            context.abort_now(CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message)
        self.outcomes.done(served, served.model, GRPC_V2, 200, started)
        return response


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def _raw(data: bytes) -> bytes:
    return data


def methods(runtime: RuntimeState) -> dict[str, Method]:
    """The inference and health services for the own transport, by path."""
    svc = InferenceService(runtime)
    health = HealthService(lambda: runtime.ready, "inference.GRPCInferenceService")
    unary: dict[str, tuple[Callable[[Any, Any], Any], Any]] = {
        "ServerLive": (svc.ServerLive, pb.ServerLiveRequest),
        "ServerReady": (svc.ServerReady, pb.ServerReadyRequest),
        "ModelReady": (svc.ModelReady, pb.ModelReadyRequest),
        "ServerMetadata": (svc.ServerMetadata, pb.ServerMetadataRequest),
        "ModelMetadata": (svc.ModelMetadata, pb.ModelMetadataRequest),
        "ModelInfer": (svc.ModelInfer, pb.ModelInferRequest),
    }
    table = {
        f"/inference.GRPCInferenceService/{name}": Method(
            handler,
            kind.FromString,
            _serialize,
            now=svc.ModelInferNow if name == "ModelInfer" else None,
        )
        for name, (handler, kind) in unary.items()
    }
    table[f"/{HEALTH_SERVICE}/Check"] = Method(health.check, _raw, _raw)
    table[f"/{HEALTH_SERVICE}/Watch"] = Method(health.watch, _raw, _raw, streaming=True)
    return table


async def _within(work: Any, seconds: float) -> Any:
    """`work` under the client's deadline: past it, the request is dropped (cancelled while
    queued, so it never runs) and answered 504."""
    try:
        # A little before the deadline, so the server answers (and counts) it rather than
        # being cancelled by the client's own expiry at the same instant.
        return await asyncio.wait_for(work, max(seconds - DEADLINE_MARGIN, 0.0))
    except TimeoutError:
        raise InferenceError(
            f"the client's deadline ({seconds * 1000:.0f} ms) passed before the answer", 504
        ) from None


def _response(served: ServedVersion, rid: str, results: dict[str, Array]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=served.model, model_version=served.version, id=rid)
    out_tensor = pb.ModelInferResponse.InferOutputTensor
    for name, arr in results.items():
        response.outputs.append(
            out_tensor(name=name, datatype=v2_datatype_of(arr), shape=list(arr.shape))
        )
        response.raw_output_contents.append(array_to_raw(arr))
    return response


async def start_grpc(
    runtime: RuntimeState, host: str, port: int, max_message: int, transport: str = "native"
) -> tuple[Any, int]:
    """Listen for gRPC on the own transport ("native") or grpc.aio ("grpcio"): the server
    (whose `stop(grace)` is awaited on shutdown) and the port it listens on."""
    if transport == "native":
        own = GrpcServer(methods(runtime), max_message)
        try:
            return own, await own.start(host, port)
        except OSError as exc:
            raise OSError(f"cannot listen for gRPC on {host}:{port}: {exc}") from exc
    if transport != "grpcio":
        raise ValueError(f"unknown gRPC transport {transport!r}; use native or grpcio")
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(runtime), server)  # type: ignore[no-untyped-call]
    health = HealthService(lambda: runtime.ready, "inference.GRPCInferenceService")
    server.add_generic_rpc_handlers((health.handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound
