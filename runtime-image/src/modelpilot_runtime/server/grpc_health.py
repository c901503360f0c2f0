"""The standard gRPC health service, `grpc.health.v1.Health` (Check and Watch), as
Kubernetes' gRPC probes and grpc-health-probe call it.

Its two messages have one field each, so they are encoded here by hand rather than adding
grpcio-health-checking for them:
`HealthCheckRequest {string service = 1;}`, `HealthCheckResponse {ServingStatus status = 1;}`.

Services: "" and "inference.GRPCInferenceService" are SERVING while the server is ready
(every model has a version serving, not shutting down), NOT_SERVING otherwise; "live" is
SERVING while the process runs. Any other name is NOT_FOUND (Check) or SERVICE_UNKNOWN
(Watch), as the specification says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3
WATCH_POLL_SECONDS = 0.5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_request(data: bytes) -> str:
    """The `service` field of a HealthCheckRequest (unknown fields skipped)."""
    service = ""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            if field == 1:
                service = data[pos : pos + length].decode("utf-8")
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos > len(data):
        raise ValueError("truncated field")
    return service


def encode_response(status: int) -> bytes:
    return bytes([0x08, status])  # field 1, varint; the statuses are all below 128


def encode_request(service: str) -> bytes:
    """For clients (tests): a HealthCheckRequest naming `service`."""
    raw = service.encode()
    if len(raw) > 127:
        raise ValueError("service name too long for this encoder")
    return bytes([0x0A, len(raw)]) + raw if raw else b""


def decode_response(data: bytes) -> int:
    """For clients (tests): the status of a HealthCheckResponse."""
    if not data:
        return 0  # UNKNOWN, the default
    tag, pos = _varint(data, 0)
    value, _ = _varint(data, pos)
    return value if tag == 0x08 else 0


def _always() -> bool:
    return True


class HealthService:
    def __init__(self, ready: Callable[[], bool], inference_service: str) -> None:
        self._ready = ready
        self._known: dict[str, Callable[[], bool]] = {
            "": ready,
            inference_service: ready,
            "live": _always,
        }

    def status(self, service: str) -> int | None:
        check = self._known.get(service)
        if check is None:
            return None
        return SERVING if check() else NOT_SERVING

    async def check(self, request: bytes, context: Any) -> bytes:
        try:
            service = decode_request(request)
        except (ValueError, UnicodeDecodeError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad HealthCheckRequest: {exc}")
            raise  # unreachable: abort raises
        status = self.status(service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        return encode_response(status or SERVICE_UNKNOWN)

    async def watch(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            service = decode_request(request)
        except (ValueError, UnicodeDecodeError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad HealthCheckRequest: {exc}")
            raise  # unreachable: abort raises
        last: int | None = None
        while True:
            status = self.status(service) or SERVICE_UNKNOWN
            if status != last:
                yield encode_response(status)
                last = status
            await asyncio.sleep(WATCH_POLL_SECONDS)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(self.check),
                "Watch": grpc.unary_stream_rpc_method_handler(self.watch),
            },
        )
