"""The runtime's gRPC transport against a hostile or broken client: every mistake is answered
for that client alone (a gRPC status, RST_STREAM, or GOAWAY with the error RFC 9113 names),
the protocol handler never raises, one connection's memory stays bounded, and another client
is still served. Driven in memory through tests/unit/runtime/h2_harness.py; the last tests
go through sockets with grpcio and tritonclient."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpilot_runtime.server import grpc_h2 as h2
from modelpilot_runtime.server.grpc_health import SERVING, decode_response, encode_request
from tests.unit.runtime import h2_harness as hh
from tests.unit.runtime.conftest import run_server

Frames = list[tuple[int, int, int, bytes]]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `test` on a fresh loop; an exception anywhere on the loop (a callback, a task
    nobody awaited) fails the test."""
    loop = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    try:
        loop.run_until_complete(test())
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert not errors, errors


async def exchange(data: bytes, chunk: int = 0, **kw: Any) -> tuple[Any, Frames]:
    """A new connection to a new test server gets `data` (in pieces of `chunk` bytes);
    returns the connection and every frame the server wrote."""
    conn, transport = hh.connect(hh.make_server(), **kw)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    for piece in pieces:
        if transport.closing:
            break
        conn.data_received(piece)
    await hh.settle()
    return conn, hh.parse(bytes(transport.out))


def connection_error(frames: Frames, code: int) -> None:
    assert hh.goaway_code(frames) == code


def resets(frames: Frames) -> dict[int, int]:
    return {sid: int(struct.unpack(">L", p)[0]) for k, _, sid, p in frames if k == h2.RST_STREAM}


# -- things that work (the baseline the rest departs from) -----------------------------------


def test_a_call_through_the_harness() -> None:
    async def go() -> None:
        conn, frames = await exchange(hh.hello() + hh.call(1, b"hi"), chunk=7)
        assert hh.statuses(frames) == {1: "0"}
        assert hh.data_of(frames, 1) == hh.message(b"hi")
        assert not conn.transport.closing

    run(go)


# -- frame layer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (h2.frame(h2.DATA, 0, 0, b"x"), h2.PROTOCOL_ERROR),
        (h2.frame(h2.HEADERS, h2.END_HEADERS, 0, hh.request_block()), h2.PROTOCOL_ERROR),
        (h2.frame(h2.HEADERS, h2.END_HEADERS, 2, hh.request_block()), h2.PROTOCOL_ERROR),
        (h2.frame(h2.SETTINGS, 0, 1, b""), h2.PROTOCOL_ERROR),
        (h2.frame(h2.SETTINGS, 0, 0, b"\x00\x04\x00"), h2.FRAME_SIZE_ERROR),
        (h2.frame(h2.SETTINGS, h2.ACK, 0, b"\x00" * 6), h2.FRAME_SIZE_ERROR),
        (h2.frame(h2.SETTINGS, 0, 0, hh.settings(push=2)), h2.PROTOCOL_ERROR),
        (h2.frame(h2.SETTINGS, 0, 0, hh.settings(window=2**31)), h2.FLOW_CONTROL_ERROR),
        (h2.frame(h2.SETTINGS, 0, 0, hh.settings(frame=16383)), h2.PROTOCOL_ERROR),
        (h2.frame(h2.SETTINGS, 0, 0, hh.settings(frame=2**24)), h2.PROTOCOL_ERROR),
        (h2.frame(h2.PING, 0, 1, b"12345678"), h2.PROTOCOL_ERROR),
        (h2.frame(h2.PING, 0, 0, b"1234567"), h2.FRAME_SIZE_ERROR),
        (h2.frame(h2.RST_STREAM, 0, 0, b"\x00" * 4), h2.PROTOCOL_ERROR),
        (h2.frame(h2.RST_STREAM, 0, 1, b"\x00" * 3), h2.FRAME_SIZE_ERROR),
        (h2.frame(h2.RST_STREAM, 0, 7, b"\x00" * 4), h2.PROTOCOL_ERROR),  # idle stream
        (h2.frame(h2.WINDOW_UPDATE, 0, 0, b"\x00" * 4), h2.PROTOCOL_ERROR),
        (h2.frame(h2.WINDOW_UPDATE, 0, 0, b"\x00" * 5), h2.FRAME_SIZE_ERROR),
        (h2.frame(h2.WINDOW_UPDATE, 0, 9, b"\x00\x00\x00\x01"), h2.PROTOCOL_ERROR),  # idle
        (h2.frame(h2.WINDOW_UPDATE, 0, 0, struct.pack(">L", 2**31 - 1)), h2.FLOW_CONTROL_ERROR),
        (h2.frame(h2.PRIORITY, 0, 0, b"\x00" * 5), h2.PROTOCOL_ERROR),
        (h2.frame(h2.PUSH_PROMISE, h2.END_HEADERS, 1, b"\x00" * 4), h2.PROTOCOL_ERROR),
        (h2.frame(h2.GOAWAY, 0, 1, b"\x00" * 8), h2.PROTOCOL_ERROR),
        (h2.frame(h2.GOAWAY, 0, 0, b"\x00" * 7), h2.FRAME_SIZE_ERROR),
        (h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, b""), h2.PROTOCOL_ERROR),
        (b"\x00\x00\x10\x00\x00\x00\x00\x00\x01" + b"\x00" * 16, h2.PROTOCOL_ERROR),  # DATA, idle
        (b"\x00\x00\x00\x01\x08\x00\x00\x00\x01", h2.PROTOCOL_ERROR),  # HEADERS, padded, empty
        (b"\x00\x00\x01\x01\x08\x00\x00\x00\x01\x01", h2.PROTOCOL_ERROR),  # pad = length
        (b"\x00\x00\x03\x01\x20\x00\x00\x00\x01abc", h2.PROTOCOL_ERROR),  # priority, short
        (b"\x10\x00\x01\x00\x00\x00\x00\x00\x01", h2.FRAME_SIZE_ERROR),  # over MAX_FRAME_SIZE
    ],
)
def test_a_broken_frame_is_a_connection_error(frames: bytes, code: int) -> None:
    async def go() -> None:
        conn, out = await exchange(hh.hello() + frames)
        connection_error(out, code)
        assert conn.transport.closing

    run(go)


def test_unknown_frame_types_and_extension_flags_are_ignored() -> None:
    async def go() -> None:
        noise = h2.frame(0x42, 0xFF, 1, b"whatever") + h2.frame(0xFA, 0, 0, b"")
        _conn, frames = await exchange(hh.hello() + noise + hh.call(1, b"ok") + noise)
        assert hh.statuses(frames) == {1: "0"}
        assert hh.goaway_code(frames) is None

    run(go)


def test_headers_on_a_lower_stream_id_are_ignored() -> None:
    """Stream 3 is implicitly closed once 5 is opened (RFC 9113, 5.1.1); frames on streams
    the server has closed are ignored (it may have reset them while they were in flight)."""

    async def go() -> None:
        calls = hh.call(5, b"a") + hh.call(3, b"b") + hh.call(7, b"c")
        _conn, frames = await exchange(hh.hello() + calls)
        assert hh.statuses(frames) == {5: "0", 7: "0"}
        assert hh.goaway_code(frames) is None

    run(go)


def test_a_priority_frame_of_the_wrong_size_resets_its_stream() -> None:
    async def go() -> None:
        bad = h2.frame(h2.PRIORITY, 0, 1, b"\x00" * 4)
        self_dependent = h2.frame(h2.PRIORITY, 0, 3, b"\x00\x00\x00\x03\x10")
        _conn, frames = await exchange(hh.hello() + bad + self_dependent + hh.call(5, b"ok"))
        assert resets(frames) == {1: h2.FRAME_SIZE_ERROR, 3: h2.PROTOCOL_ERROR}
        assert hh.statuses(frames) == {5: "0"}

    run(go)


def test_a_stream_that_depends_on_itself_is_reset() -> None:
    async def go() -> None:
        block = b"\x00\x00\x00\x01\x10" + hh.request_block()
        out = h2.frame(h2.HEADERS, h2.END_HEADERS | h2.PRIORITY_FLAG, 1, block)
        _conn, frames = await exchange(hh.hello() + out + hh.call(3, b"ok"))
        assert resets(frames).get(1) == h2.PROTOCOL_ERROR
        assert hh.statuses(frames).get(3) == "0"

    run(go)


# -- headers and HPACK -----------------------------------------------------------------------


def test_continuation_flood_is_stopped() -> None:
    async def go() -> None:
        start = h2.frame(h2.HEADERS, 0, 1, hh.request_block())
        flood = h2.frame(h2.CONTINUATION, 0, 1, b"\x00\x01a\x01b" * 1000) * 100
        conn, frames = await exchange(hh.hello() + start + flood)
        connection_error(frames, h2.PROTOCOL_ERROR)  # the header block passes its limit
        assert conn.continuation is None or len(conn.continuation[2]) <= h2.MAX_HEADER_BLOCK

    run(go)


def test_empty_continuations_do_not_go_on_forever() -> None:
    async def go() -> None:
        start = h2.frame(h2.HEADERS, 0, 1, hh.request_block())
        flood = h2.frame(h2.CONTINUATION, 0, 1, b"") * 100_000
        _, frames = await exchange(hh.hello() + start + flood)
        assert hh.goaway_code(frames) is not None

    run(go)


def test_a_header_block_over_the_limit_in_one_frame_is_refused_undecoded() -> None:
    """A single HEADERS frame may be up to 1 MiB: its block is held to the same limit as one
    in CONTINUATIONs, before any (pure-Python, Huffman) decoding."""

    async def go() -> None:
        value = bytes(hpack.Encoder().encode([("x-big", "a" * 300_000)]))
        block = hh.request_block() + value
        _, frames = await exchange(hh.hello() + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block))
        connection_error(frames, h2.PROTOCOL_ERROR)  # not COMPRESSION_ERROR: never decoded

    run(go)


@pytest.mark.parametrize(
    "block",
    [
        b"\xbe",  # index 62, empty table
        b"\xff\xff\xff\xff\xff\xff\x01",  # index far past any table
        b"\x40\x81\xff\x01a",  # a Huffman string with EOS
        b"\x82\x3f\xe1\x1f",  # table size update after a header field
        b"\x3f\xe2\x1f",  # table size update over SETTINGS_HEADER_TABLE_SIZE
    ],
)
def test_a_bad_header_block_is_a_compression_error(block: bytes) -> None:
    async def go() -> None:
        out = hh.hello() + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, block)
        _, frames = await exchange(out)
        connection_error(frames, h2.COMPRESSION_ERROR)

    run(go)


def test_an_hpack_bomb_is_bounded() -> None:
    """One big dynamic-table entry referenced thousands of times decodes to far more than
    the header list limit: refused, not expanded."""

    async def go() -> None:
        entry = b"\x40\x01x" + h2.hpack_int(4000, 7) + b"y" * 4000
        block = entry + b"\xbe" * 20_000
        _, frames = await exchange(hh.hello() + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block))
        assert hh.goaway_code(frames) is not None

    run(go)


def test_long_status_messages_fit_the_clients_frames() -> None:
    """An unknown method's name comes back in grpc-message: however long, the trailers
    stay within the client's SETTINGS_MAX_FRAME_SIZE (16384 by default)."""

    async def go() -> None:
        path = "/t.S/" + "\u00e9" * 10_000  # percent-encoded to 6 bytes a character
        _, frames = await exchange(hh.hello() + hh.call(1, b"", path=path))
        assert all(len(p) <= h2.DEFAULT_FRAME for _, _, _, p in frames)
        assert hh.statuses(frames) == {1: str(grpc.StatusCode.UNIMPLEMENTED.value[0])}

    run(go)


@pytest.mark.parametrize("value", ["1S\n", "\u0661S", "1S ", " 1S", "bad", "1x", "123456789S"])
def test_a_malformed_grpc_timeout_is_refused(value: str) -> None:
    """Not `1S` with a newline after it, nor digits that are not ASCII. A value RFC 9113
    makes malformed (a newline, whitespace at either end) resets the stream (PROTOCOL_ERROR);
    any other bad timeout is answered INTERNAL."""
    assert h2.parse_timeout(value) is None

    async def go() -> None:
        block = hh.request_block("/t.S/Echo", [("grpc-timeout", value)])
        out = h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block)
        _, frames = await exchange(
            hh.hello() + out + h2.frame(h2.DATA, h2.END_STREAM, 1, hh.message(b"x"))
        )
        if value != value.strip():
            assert resets(frames) == {1: h2.PROTOCOL_ERROR}
            assert hh.statuses(frames) == {}
        else:
            assert hh.statuses(frames) == {1: str(grpc.StatusCode.INTERNAL.value[0])}

    if value.isascii():
        run(go)


# -- request header validation (RFC 9113, sections 8.2 and 8.3) -----------------------------

GOOD = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/t.S/Echo"),
    (":authority", "t"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def without(name: str) -> list[tuple[str, str]]:
    return [h for h in GOOD if h[0] != name]


def replaced(name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n == name else v) for n, v in GOOD]


@pytest.mark.parametrize(
    "headers",
    [
        [*GOOD, ("X-Upper", "v")],  # an uppercase name
        [*GOOD, ("connection", "keep-alive")],
        [*GOOD, ("keep-alive", "timeout=5")],
        [*GOOD, ("proxy-connection", "keep-alive")],
        [*GOOD, ("transfer-encoding", "chunked")],
        [*GOOD, ("upgrade", "h2c")],
        replaced("te", "gzip"),
        replaced("te", "trailers, deflate"),
        [*without(":path"), (":path", "/t.S/Echo")],  # a pseudo-header after regular ones
        [(":status", "200"), *GOOD],  # a response's pseudo-header
        [(":protocol", "websocket"), *GOOD],  # unknown
        [(":path", "/t.S/Echo"), *GOOD],  # repeated
        [(":method", "POST"), *GOOD],
        [(":authority", "u"), *GOOD],
        without(":method"),
        without(":scheme"),
        without(":path"),
        replaced(":path", ""),
        [*GOOD, ("x-a\x00b", "v")],  # names: NUL, CR, LF, space, tab, colon, DEL, latin-1
        [*GOOD, ("x-a\rb", "v")],
        [*GOOD, ("x-a\nb", "v")],
        [*GOOD, ("x-a b", "v")],
        [*GOOD, ("x-a\tb", "v")],
        [*GOOD, ("x:b", "v")],
        [*GOOD, ("x-\x7f", "v")],
        [*GOOD, ("x-\xe9", "v")],
        [*GOOD, ("", "v")],  # an empty name
        [*GOOD, ("x-v", "a\x00b")],  # values: NUL, CR, LF, whitespace at either end
        [*GOOD, ("x-v", "a\rb")],
        [*GOOD, ("x-v", "a\nb")],
        [*GOOD, ("x-v", " a")],
        [*GOOD, ("x-v", "a\t")],
        replaced(":path", "/t.S/Echo "),
        replaced("content-type", "application/grpc\r\nx-injected: 1"),
    ],
)
def test_a_malformed_request_is_a_stream_error(headers: list[tuple[str, str]]) -> None:
    """RST_STREAM PROTOCOL_ERROR for that stream (not a gRPC status: RFC 9113, section
    8.1.1), no handler runs, and the connection goes on serving."""

    async def go() -> None:
        bad = h2.frame(h2.HEADERS, h2.END_HEADERS, 1, hh.raw_block(headers))
        bad += h2.frame(h2.DATA, h2.END_STREAM, 1, hh.message(b"x"))
        conn, frames = await exchange(hh.hello() + bad + hh.call(3, b"after"))
        assert resets(frames) == {1: h2.PROTOCOL_ERROR}
        assert hh.statuses(frames) == {3: "0"}
        assert hh.data_of(frames, 1) == b""
        assert hh.goaway_code(frames) is None
        assert not conn.transport.closing

    run(go)


def test_a_malformed_field_stays_malformed_when_indexed() -> None:
    """Fields are checked as literals are decoded; one added to the dynamic table (by a
    request that was refused for it) is refused again when a later request names its
    index, while the table stays in step with the client's encoder."""

    async def go() -> None:
        bad = b"\x40\x03x-v\x03a\nb"  # literal with incremental indexing: entry 62
        first = hh.raw_block(GOOD) + bad
        again = hh.raw_block(GOOD) + b"\xbe"  # indexed: entry 62
        data = h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, first)
        data += h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 3, again)
        conn, frames = await exchange(hh.hello() + data + hh.call(5, b"after"))
        assert resets(frames) == {1: h2.PROTOCOL_ERROR, 3: h2.PROTOCOL_ERROR}
        assert hh.statuses(frames) == {5: "0"}
        assert ("x-v", "a\nb") in conn.decoder.table

    run(go)


@pytest.mark.parametrize(
    "headers",
    [
        GOOD,
        without(":authority"),
        without("te"),
        [*GOOD, ("user-agent", "grpc-go/1.64.0"), ("grpc-timeout", "19999843u")],
        [*GOOD, ("x-v", "a b\tc"), ("x-empty", ""), ("x-bin", "\x01\x7f\xff")],
        [*GOOD, ("x-!#$%&'*+-.^_`|~09az", "v")],
    ],
)
def test_well_formed_requests_are_served(headers: list[tuple[str, str]]) -> None:
    async def go() -> None:
        call = h2.frame(h2.HEADERS, h2.END_HEADERS, 1, hh.raw_block(headers))
        call += h2.frame(h2.DATA, h2.END_STREAM, 1, hh.message(b"x"))
        _, frames = await exchange(hh.hello() + call)
        assert resets(frames) == {}
        assert hh.statuses(frames) == {1: "0"}

    run(go)


def test_connect_without_path_is_not_malformed() -> None:
    """CONNECT carries no :scheme nor :path (RFC 9113, section 8.5): the server answers
    405 as for any method but POST, rather than resetting it as malformed."""

    async def go() -> None:
        block = hh.raw_block([(":method", "CONNECT"), (":authority", "t:443")])
        _, frames = await exchange(hh.hello() + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block))
        assert resets(frames) == {}
        assert hh.statuses(frames) == {1: "http 405"}

    run(go)


@pytest.mark.parametrize(
    ("trailers", "flags"),
    [
        ([(":path", "/t.S/Echo")], h2.END_HEADERS | h2.END_STREAM),  # a pseudo-header
        ([("connection", "close")], h2.END_HEADERS | h2.END_STREAM),
        ([("x-v", "a\nb")], h2.END_HEADERS | h2.END_STREAM),
        ([("x-v", "ok")], h2.END_HEADERS),  # trailers that do not end the stream
    ],
)
def test_malformed_trailers_are_a_stream_error(trailers: list[tuple[str, str]], flags: int) -> None:
    async def go() -> None:
        data = h2.frame(h2.HEADERS, h2.END_HEADERS, 1, hh.request_block())
        data += h2.frame(h2.DATA, 0, 1, hh.message(b"x"))
        data += h2.frame(h2.HEADERS, flags, 1, hh.raw_block(trailers))
        conn, frames = await exchange(hh.hello() + data + hh.call(3, b"after"))
        assert resets(frames) == {1: h2.PROTOCOL_ERROR}
        assert hh.statuses(frames) == {3: "0"}
        assert not conn.streams

    run(go)


def test_well_formed_trailers_end_the_request() -> None:
    async def go() -> None:
        data = h2.frame(h2.HEADERS, h2.END_HEADERS, 1, hh.request_block())
        data += h2.frame(h2.DATA, 0, 1, hh.message(b"x"))
        data += h2.frame(
            h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, hh.raw_block([("x-t", "1")])
        )
        _, frames = await exchange(hh.hello() + data)
        assert resets(frames) == {}
        assert hh.statuses(frames) == {1: "0"}

    run(go)


# -- streams, flow control, messages ---------------------------------------------------------


def test_data_beyond_the_stream_window_is_a_flow_control_error() -> None:
    async def go() -> None:
        headers = h2.frame(h2.HEADERS, h2.END_HEADERS, 1, hh.request_block())
        chunk = h2.frame(h2.DATA, 0, 1, b"\x00" * h2.OWN_MAX_FRAME)
        conn, frames = await exchange(hh.hello() + headers + chunk + chunk)
        # The message limit ends the call first in this server; either way the stream is
        # answered and the excess does not pile up.
        assert 1 in hh.statuses(frames) or 1 in resets(frames)
        assert 1 not in conn.streams

    run(go)


def test_data_beyond_a_stream_window_resets_the_stream() -> None:
    """The server gives a stream's window back once half of it has arrived: 511 KiB and then
    a 1 MiB frame is 1.5 MiB where 1 MiB was allowed."""

    async def go() -> None:
        server = hh.make_server(max_message=8 << 20)
        conn, transport = hh.connect(server)
        first = hh.message(b"", length=4 << 20) + b"\x00" * (511 * 1024 - 5)
        conn.data_received(
            hh.hello()
            + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, hh.request_block())
            + h2.frame(h2.DATA, 0, 1, first)
            + h2.frame(h2.DATA, 0, 1, b"\x00" * h2.STREAM_WINDOW)
            + hh.call(3, b"next")
        )
        await hh.settle()
        frames = hh.parse(bytes(transport.out))
        assert resets(frames) == {1: h2.FLOW_CONTROL_ERROR}
        assert hh.statuses(frames) == {3: "0"}
        assert conn.buffered == 0

    run(go)


def test_request_data_held_by_one_connection_is_bounded() -> None:
    """Many streams each holding most of a message: past the connection's budget the stream
    that brings more is answered RESOURCE_EXHAUSTED, and what was held is let go."""

    async def go() -> None:
        server = hh.make_server(max_message=1 << 20)
        server.max_buffered = 3 << 20
        conn, transport = hh.connect(server)
        conn.data_received(hh.hello())
        part = hh.message(b"", length=1 << 20) + b"\x00" * (900 * 1024)
        for i in range(hh.MAX_STREAMS):
            sid = 1 + 2 * i
            conn.data_received(
                h2.frame(h2.HEADERS, h2.END_HEADERS, sid, hh.request_block())
                + h2.frame(h2.DATA, 0, sid, part)
            )
            assert conn.buffered <= server.max_buffered
        frames = hh.parse(bytes(transport.out))
        exhausted = str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert set(hh.statuses(frames).values()) == {exhausted}
        assert len(hh.statuses(frames)) == hh.MAX_STREAMS - 3
        conn.data_received(h2.frame(h2.RST_STREAM, 0, 1, struct.pack(">L", h2.CANCEL)))
        assert conn.buffered == 2 * len(part)

    run(go)


def test_data_after_the_end_of_the_request_is_stream_closed() -> None:
    async def go() -> None:
        late = h2.frame(h2.DATA, 0, 1, b"more")
        _conn, frames = await exchange(hh.hello() + hh.call(1, b"hi") + late)
        assert resets(frames).get(1) == h2.STREAM_CLOSED or hh.statuses(frames).get(1) == "0"
        assert hh.goaway_code(frames) in (None, h2.STREAM_CLOSED)

    run(go)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (hh.message(b"abc", length=10), grpc.StatusCode.UNIMPLEMENTED),  # prefix > body
        (hh.message(b"abc", length=1), grpc.StatusCode.UNIMPLEMENTED),  # prefix < body
        (hh.message(b"", length=hh.MAX_MESSAGE + 1), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (hh.message(b"abc", compressed=1), grpc.StatusCode.INTERNAL),
        (hh.message(b"abc", compressed=7), grpc.StatusCode.INTERNAL),
        (b"\x00\x00", grpc.StatusCode.UNIMPLEMENTED),  # shorter than a prefix
    ],
)
def test_bad_grpc_messages_get_a_status(body: bytes, status: grpc.StatusCode) -> None:
    async def go() -> None:
        out = h2.frame(h2.HEADERS, h2.END_HEADERS, 1, hh.request_block())
        out += h2.frame(h2.DATA, h2.END_STREAM, 1, body)
        _conn, frames = await exchange(hh.hello() + out + hh.call(3, b"next"))
        assert hh.statuses(frames) == {1: str(status.value[0]), 3: "0"}

    run(go)


def test_more_streams_than_advertised_are_refused() -> None:
    async def go() -> None:
        conn, transport = hh.connect(hh.make_server())
        block = hh.request_block()
        opened = b"".join(
            h2.frame(h2.HEADERS, h2.END_HEADERS, 1 + 2 * i, block)
            for i in range(hh.MAX_STREAMS + 3)
        )
        conn.data_received(hh.hello() + opened)
        frames = hh.parse(bytes(transport.out))
        assert len(conn.streams) == hh.MAX_STREAMS
        assert sorted(resets(frames)) == [
            1 + 2 * i for i in range(hh.MAX_STREAMS, hh.MAX_STREAMS + 3)
        ]
        assert set(resets(frames).values()) == {h2.REFUSED_STREAM}

    run(go)


def test_a_reset_flood_is_cut_off() -> None:
    """Open a call and cancel it at once, over and over (CVE-2023-44487): each starts a
    handler, none counts against MAX_CONCURRENT_STREAMS. The server goes away after a
    bounded number of them rather than serving the loop to one client."""

    async def go() -> None:
        block = hh.request_block()
        body = h2.frame(h2.DATA, h2.END_STREAM, 0, b"")
        flood = b""
        for i in range(5000):
            sid = 1 + 2 * i
            flood += (
                h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block)
                + h2.frame(h2.DATA, h2.END_STREAM, sid, hh.message(b"x"))
                + h2.frame(h2.RST_STREAM, 0, sid, struct.pack(">L", h2.CANCEL))
            )
        del body
        conn, frames = await exchange(hh.hello() + flood)
        assert hh.goaway_code(frames) is not None
        assert conn.last_stream < 2 * 5000

    run(go)


def test_window_update_overflow_on_a_stream_resets_it() -> None:
    async def go() -> None:
        conn, transport = hh.connect(hh.make_server())
        conn.data_received(hh.hello() + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, hh.request_block()))
        conn.data_received(
            h2.frame(h2.WINDOW_UPDATE, 0, 1, struct.pack(">L", 2**31 - 1))
            + h2.frame(h2.WINDOW_UPDATE, 0, 3, b"\x00\x00\x00\x00")  # idle: connection error
        )
        frames = hh.parse(bytes(transport.out))
        assert resets(frames).get(1) == h2.FLOW_CONTROL_ERROR
        connection_error(frames, h2.PROTOCOL_ERROR)

    run(go)


def test_initial_window_size_overflowing_a_stream_is_a_flow_control_error() -> None:
    async def go() -> None:
        conn, transport = hh.connect(hh.make_server())
        conn.data_received(hh.hello() + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, hh.request_block()))
        conn.data_received(h2.frame(h2.WINDOW_UPDATE, 0, 1, struct.pack(">L", 2**31 - 1 - 65535)))
        conn.data_received(h2.frame(h2.SETTINGS, 0, 0, hh.settings(window=65536)))
        connection_error(hh.parse(bytes(transport.out)), h2.FLOW_CONTROL_ERROR)

    run(go)


# -- a client that does not read -------------------------------------------------------------


def test_a_client_that_never_reads_is_not_buffered_without_end() -> None:
    """PINGs (and SETTINGS) each ask for an answer: a client that sends them and never reads
    makes the server stop reading it once its write buffer is full."""

    async def go() -> None:
        conn, transport = hh.connect(hh.make_server(), high_water=64 * 1024)
        conn.data_received(hh.hello())
        ping = h2.frame(h2.PING, 0, 0, b"12345678") * 1000
        for _ in range(1000):
            if not transport.reading:
                break
            conn.data_received(ping)
        assert not transport.reading
        assert len(transport.out) < 1024 * 1024
        transport.drain()
        assert transport.reading

    run(go)


def test_partial_frames_are_held_to_one_frame() -> None:
    async def go() -> None:
        conn, transport = hh.connect(hh.make_server())
        conn.data_received(hh.hello())
        header = b"\x0f\xff\xff\x00\x00\x00\x00\x00\x01"  # a 1 MiB - 1 DATA frame
        conn.data_received(header)
        for _ in range(2000):  # a byte at a time
            conn.data_received(b"\x00" * 100)
        assert len(conn.buffer) <= h2.OWN_MAX_FRAME + 9
        assert not transport.closing

    run(go)


# -- idle connections and slow handshakes ----------------------------------------------------


def goaway(frames: Frames) -> tuple[int, int] | None:
    """The (last stream id, error code) of the first GOAWAY, or None."""
    for kind, _, _, payload in frames:
        if kind == h2.GOAWAY:
            last, code = struct.unpack(">LL", payload[:8])
            return int(last) & 0x7FFFFFFF, int(code)
    return None


def test_an_idle_connection_is_sent_goaway_and_closed() -> None:
    """The server's sweep is called with a loop time past the limit (no waiting): a
    connection idle that long gets GOAWAY NO_ERROR naming the last stream it processed,
    then is closed; one idle for less is left alone."""

    async def go() -> None:
        server = hh.make_server(idle_timeout=30.0)
        conn, transport = hh.connect(server)
        conn.data_received(hh.hello() + hh.call(1, b"a") + hh.call(3, b"b"))
        await hh.settle()
        loop = asyncio.get_running_loop()
        server.sweep(loop.time() + 29.0)
        assert goaway(hh.parse(bytes(transport.out))) is None
        assert not transport.closing
        server.sweep(loop.time() + 31.0)
        frames = hh.parse(bytes(transport.out))
        assert hh.statuses(frames) == {1: "0", 3: "0"}
        assert goaway(frames) == (3, h2.NO_ERROR)
        assert transport.closing
        await hh.settle()
        assert conn not in server.connections

    run(go)


def test_bytes_received_keep_a_connection_from_idling() -> None:
    async def go() -> None:
        server = hh.make_server(idle_timeout=30.0)
        conn, transport = hh.connect(server)
        conn.data_received(hh.hello())
        loop = asyncio.get_running_loop()
        conn.last_active -= 29.0  # as if the preface came 29 s ago
        conn.data_received(h2.frame(h2.PING, 0, 0, b"12345678"))
        server.sweep(loop.time() + 29.0)
        assert not transport.closing
        assert goaway(hh.parse(bytes(transport.out))) is None

    run(go)


def test_a_call_in_flight_keeps_its_connection_past_the_idle_limit() -> None:
    """Idle is counted from the end of the last call: a connection whose call is held (its
    handler waits on an event) is not closed however long it takes."""

    async def go() -> None:
        release = asyncio.Event()

        async def held(request: bytes, context: h2.Context) -> bytes:
            await release.wait()
            return request

        server = hh.make_server(
            methods={"/t.S/Held": h2.Method(held, hh.ident, hh.ident)}, idle_timeout=30.0
        )
        conn, transport = hh.connect(server)
        conn.data_received(hh.hello() + hh.call(1, b"held", path="/t.S/Held"))
        await hh.settle()
        loop = asyncio.get_running_loop()
        server.sweep(loop.time() + 1000.0)
        assert goaway(hh.parse(bytes(transport.out))) is None
        assert not transport.closing
        conn.last_active -= 1000.0  # the call has been running for 1000 s
        release.set()
        await hh.settle()
        frames = hh.parse(bytes(transport.out))
        assert hh.statuses(frames) == {1: "0"}
        assert hh.data_of(frames, 1) == hh.message(b"held")
        server.sweep(loop.time() + 29.0)  # idle since the answer, not since the request
        assert not transport.closing
        server.sweep(loop.time() + 31.0)
        assert goaway(hh.parse(bytes(transport.out))) == (1, h2.NO_ERROR)
        assert transport.closing

    run(go)


@pytest.mark.parametrize("sent", [b"", h2.PREFACE[:10], h2.PREFACE])
def test_a_client_that_does_not_finish_its_handshake_is_closed(sent: bytes) -> None:
    """Nothing, part of the preface, or the preface without SETTINGS (the bytes trickle in,
    so the connection is not idle): closed once the handshake limit has passed."""

    async def go() -> None:
        server = hh.make_server(handshake_timeout=10.0)
        conn, transport = hh.connect(server)
        if sent:
            conn.data_received(sent)
        loop = asyncio.get_running_loop()
        server.sweep(loop.time() + 9.0)
        assert not transport.closing
        conn.last_active = loop.time() + 10.5  # still trickling in: not idle
        server.sweep(loop.time() + 11.0)
        assert goaway(hh.parse(bytes(transport.out))) == (0, h2.NO_ERROR)
        assert transport.closing

    run(go)


def test_a_finished_handshake_is_not_timed() -> None:
    async def go() -> None:
        server = hh.make_server(handshake_timeout=10.0, idle_timeout=0)
        conn, transport = hh.connect(server)
        conn.data_received(hh.hello())
        loop = asyncio.get_running_loop()
        server.sweep(loop.time() + 1e6)
        assert not transport.closing
        assert goaway(hh.parse(bytes(transport.out))) is None

    run(go)


def test_zero_turns_the_timeouts_off() -> None:
    async def go() -> None:
        server = hh.make_server(idle_timeout=0, handshake_timeout=0)
        conn, transport = hh.connect(server)
        conn.data_received(h2.PREFACE[:5])
        server.sweep(asyncio.get_running_loop().time() + 1e6)
        assert not transport.closing

    run(go)


# -- fuzzing ---------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

sids = st.sampled_from([0, 1, 2, 3, 5, 7, 0x7FFFFFFF, 0x80000001])
blocks = st.one_of(
    st.binary(max_size=64),
    st.builds(hh.request_block, st.sampled_from(["/t.S/Echo", "/t.S/Now", "/t.S/Stream", "/x"])),
    st.builds(
        lambda path, timeout: hh.request_block(path, [("grpc-timeout", timeout)]),
        st.sampled_from(["/t.S/Echo", "/t.S/Stream"]),
        st.sampled_from(["0n", "1m", "100S", "bad", "99999999H", "1S\n"]),
    ),
)
payloads = st.one_of(
    st.binary(max_size=48),
    blocks,
    st.builds(
        hh.message,
        st.binary(max_size=32),
        st.sampled_from([0, 1, 255]),
        st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    ),
    st.lists(
        st.tuples(
            st.integers(0, 8),
            st.sampled_from([0, 1, 16383, 16384, 65535, 2**24, 2**31 - 1, 2**31, 2**32 - 1]),
        ),
        max_size=4,
    ).map(lambda kv: b"".join(struct.pack(">HL", k, v) for k, v in kv)),
    st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1]).map(lambda n: struct.pack(">L", n)),
)
frames_st = st.builds(
    lambda kind, flags, sid, payload: h2.frame(kind, flags, sid, payload),
    st.one_of(st.integers(0, 10), st.integers(0, 255)),
    st.one_of(st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25]), st.integers(0, 255)),
    sids,
    payloads,
)


def check_bounded(conn: Any, server: h2.GrpcServer) -> None:
    assert len(conn.buffer) <= h2.OWN_MAX_FRAME + 9
    assert len(conn.streams) <= server.max_streams
    for stream in conn.streams.values():
        assert len(stream.body) <= server.max_message + 5
    assert conn.buffered == sum(len(s.body) for s in conn.streams.values())
    assert conn.buffered <= server.max_buffered
    assert conn.decoder.size <= conn.decoder.max_table
    if conn.continuation is not None:
        assert len(conn.continuation[2]) <= h2.MAX_HEADER_BLOCK + h2.OWN_MAX_FRAME


async def fuzz_and_check(data: bytes, cuts: list[int]) -> None:
    server = hh.make_server()
    conn, transport = hh.connect(server)
    pos = 0
    for cut in [*sorted(cuts), len(data)]:
        if transport.closing:
            break
        conn.data_received(data[pos:cut])  # must not raise
        pos = cut
        check_bounded(conn, server)
        await asyncio.sleep(0)
    await hh.settle()
    check_bounded(conn, server)
    frames = hh.parse(bytes(transport.out))
    if hh.goaway_code(frames) not in (None, h2.NO_ERROR):
        assert transport.closing  # an error GOAWAY ends the connection
    # Another client on the same server is answered.
    other, other_transport = hh.connect(server)
    other.data_received(hh.hello() + hh.call(1, b"still here"))
    await hh.settle()
    answer = hh.parse(bytes(other_transport.out))
    assert hh.statuses(answer) == {1: "0"}
    assert hh.data_of(answer, 1) == hh.message(b"still here")


@FUZZ
@given(st.binary(max_size=512), st.lists(st.integers(0, 512), max_size=8), st.booleans())
def test_fuzz_raw_bytes(data: bytes, cuts: list[int], with_preface: bool) -> None:
    prefix = hh.hello() if with_preface else b""
    run(lambda: fuzz_and_check(prefix + data, [c + len(prefix) for c in cuts if c <= len(data)]))


@FUZZ
@given(st.lists(frames_st, max_size=20), st.lists(st.integers(0, 2048), max_size=8))
def test_fuzz_frame_sequences(frames: list[bytes], cuts: list[int]) -> None:
    data = hh.hello() + b"".join(frames)
    run(lambda: fuzz_and_check(data, [c for c in cuts if c <= len(data)]))


# -- through sockets, with real clients ------------------------------------------------------


@pytest.fixture(scope="module")
def live(sample_repo: Path) -> Any:
    with run_server(models={"tiny": sample_repo / "tiny"}, grpc_server="native") as s:
        yield s


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=encode_request,
            response_deserializer=decode_response,
        )
        return int(check("", timeout=10))


def test_garbage_on_one_socket_leaves_real_clients_served(live: Any) -> None:
    port = live.runtime.grpc_port
    hostile = [
        hh.hello() + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\xff\xff\xff\xff\xff\x01"),
        hh.hello() + h2.frame(h2.WINDOW_UPDATE, 0, 0, struct.pack(">L", 2**31 - 1)),
        hh.hello()
        + h2.frame(h2.HEADERS, 0, 1, hh.request_block())
        + h2.frame(h2.CONTINUATION, 0, 1, b"") * 5000,
        hh.hello() + b"\x00\x00",  # a partial frame, left open
    ]
    idle = []
    for data in hostile:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(data)
        idle.append(sock)
    try:
        assert health(live.grpc_target) == SERVING
        client = grpcclient.InferenceServerClient(live.grpc_target)
        try:
            inp = grpcclient.InferInput("input", [2, 8], "FP32")
            inp.set_data_from_numpy(np.ones((2, 8), np.float32))
            assert client.infer("tiny", [inp]).as_numpy("probabilities").shape == (2, 3)
        finally:
            client.close()
    finally:
        for sock in idle:
            sock.close()


def test_the_sweep_closes_idle_and_silent_sockets_but_not_a_call_in_flight() -> None:
    """The server's periodic sweep, through sockets, with limits of a tenth of a second: a
    client that never sends its preface and one that stays idle after a call are sent
    GOAWAY and closed; a connection whose call is held open past the limit is not, and is
    closed only once idle after its answer."""

    async def read_all(reader: asyncio.StreamReader) -> Frames:
        data = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server closed it
        return hh.parse(data)

    async def go() -> None:
        release = asyncio.Event()
        started = asyncio.Event()

        async def held(request: bytes, context: h2.Context) -> bytes:
            started.set()
            await release.wait()
            return request

        server = hh.make_server(
            methods={"/t.S/Held": h2.Method(held, hh.ident, hh.ident)},
            idle_timeout=0.1,
            handshake_timeout=0.1,
        )
        port = await server.start("127.0.0.1", 0)
        try:
            silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
            idle_w.write(hh.hello() + hh.call(1, b"a"))
            busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
            busy_w.write(hh.hello() + hh.call(1, b"held", path="/t.S/Held"))

            silent = await read_all(silent_r)
            assert goaway(silent) == (0, h2.NO_ERROR)
            idle = await read_all(idle_r)
            assert hh.statuses(idle) == {1: "0"}
            assert goaway(idle) == (1, h2.NO_ERROR)

            await asyncio.wait_for(started.wait(), 10)
            # Past the idle limit several times over (the sweep runs every 0.05 s).
            await asyncio.sleep(0.5)
            assert not busy_r.at_eof()
            assert len(server.connections) == 1
            release.set()
            busy = await read_all(busy_r)
            assert hh.statuses(busy) == {1: "0"}
            assert hh.data_of(busy, 1) == hh.message(b"held")
            assert goaway(busy) == (1, h2.NO_ERROR)
            for w in (silent_w, idle_w, busy_w):
                w.close()
        finally:
            await server.stop(0)

    run(go)


def test_a_long_method_name_through_grpcio(live: Any) -> None:
    with grpc.insecure_channel(live.grpc_target) as channel:
        call = channel.unary_unary("/t.S/" + "m" * 30_000)
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert health(live.grpc_target) == SERVING
