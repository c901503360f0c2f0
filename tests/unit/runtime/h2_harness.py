"""An in-memory HTTP/2 peer for the runtime's gRPC transport: a fake transport that records
what the server writes, and helpers to build and parse frames. The adversarial and fuzz
tests drive `_Connection` through it directly, on their own event loop, without sockets."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import hpack

from modelpilot_runtime.server import grpc_h2 as h2

MAX_MESSAGE = 4096
MAX_STREAMS = 8


class FakeTransport:
    """What asyncio's transport gives the protocol: writes are kept, a close is delivered as
    `connection_lost` on the next loop turn, and writes past a high-water mark pause
    writing, as a socket whose peer does not read would."""

    def __init__(self, loop: asyncio.AbstractEventLoop, high_water: int | None = None) -> None:
        self.loop = loop
        self.protocol: Any = None
        self.out = bytearray()
        self.closing = False
        self.reading = True
        self.high_water = high_water
        self.paused = False

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        self.out += data
        if self.high_water is not None and not self.paused and len(self.out) > self.high_water:
            self.paused = True
            self.protocol.pause_writing()

    def drain(self) -> bytes:
        """The peer reads everything written so far."""
        data, self.out = bytes(self.out), bytearray()
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()
        return data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    abort = close

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return len(self.out)


async def echo(request: bytes, context: h2.Context) -> bytes:
    await asyncio.sleep(0)
    return request


async def repeat(request: bytes, context: h2.Context) -> AsyncIterator[bytes]:
    for _ in range(3):
        await asyncio.sleep(0)
        yield request


def ident(data: bytes) -> bytes:
    return data


def make_server(
    max_message: int = MAX_MESSAGE, methods: dict[str, h2.Method] | None = None, **kw: Any
) -> h2.GrpcServer:
    """A test server (`methods` added to the standard ones; `kw` for GrpcServer)."""
    standard = {
        "/t.S/Echo": h2.Method(echo, ident, ident),
        "/t.S/Now": h2.Method(echo, ident, ident, now=lambda r, c: r or None),
        "/t.S/Stream": h2.Method(repeat, ident, ident, streaming=True),
    }
    return h2.GrpcServer(
        {**standard, **(methods or {})}, max_message, max_streams=MAX_STREAMS, **kw
    )


def connect(server: h2.GrpcServer, high_water: int | None = None) -> tuple[Any, FakeTransport]:
    loop = asyncio.get_running_loop()
    transport = FakeTransport(loop, high_water)
    conn = h2._Connection(server)
    transport.protocol = conn
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if len(data) < 9 + length:
            break
        sid = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        frames.append((data[3], data[4], sid, data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


def request_block(path: str = "/t.S/Echo", extra: list[tuple[str, str]] | None = None) -> bytes:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "t"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *(extra or []),
    ]
    return bytes(hpack.Encoder().encode(headers))


def raw_block(headers: list[tuple[str, str]]) -> bytes:
    """A header block of literals exactly as given (no lowercasing, no checks), for the
    malformed requests an encoder would not make."""
    return b"".join(h2.literal(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers)


def message(body: bytes, compressed: int = 0, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return bytes([compressed]) + n.to_bytes(4, "big") + body


def call(sid: int, body: bytes, path: str = "/t.S/Echo") -> bytes:
    return h2.frame(h2.HEADERS, h2.END_HEADERS, sid, request_block(path)) + h2.frame(
        h2.DATA, h2.END_STREAM, sid, message(body)
    )


def hello(settings: bytes = b"") -> bytes:
    return h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, settings)


def settings(**values: int) -> bytes:
    keys = {
        "table": h2.SETTINGS_HEADER_TABLE_SIZE,
        "push": h2.SETTINGS_ENABLE_PUSH,
        "streams": h2.SETTINGS_MAX_CONCURRENT_STREAMS,
        "window": h2.SETTINGS_INITIAL_WINDOW_SIZE,
        "frame": h2.SETTINGS_MAX_FRAME_SIZE,
        "headers": h2.SETTINGS_MAX_HEADER_LIST_SIZE,
    }
    return b"".join(struct.pack(">HL", keys[k], v) for k, v in values.items())


def goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int | None:
    for kind, _, _, payload in frames:
        if kind == h2.GOAWAY:
            return int(struct.unpack(">LL", payload[:8])[1])
    return None


def statuses(frames: list[tuple[int, int, int, bytes]]) -> dict[int, str]:
    """The grpc-status each stream ended with (trailers decoded in order, one decoder)."""
    decoder = hpack.Decoder()
    out = {}
    for kind, _, sid, payload in frames:
        if kind == h2.HEADERS:
            headers = {str(n): str(v) for n, v in decoder.decode(payload)}
            if "grpc-status" in headers:
                out[sid] = headers["grpc-status"]
            elif ":status" in headers and headers[":status"] != "200":
                out[sid] = "http " + headers[":status"]
    return out


def data_of(frames: list[tuple[int, int, int, bytes]], sid: int) -> bytes:
    return b"".join(p for k, _, s, p in frames if k == h2.DATA and s == sid)


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)
