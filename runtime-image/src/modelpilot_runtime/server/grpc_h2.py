"""gRPC over HTTP/2 (cleartext, h2c) on the runtime's own event loop: the server's default
gRPC transport (`--grpc-server native`; `grpcio` keeps grpc.aio).

Why a transport of its own: grpc.aio answers a call through its C core's threads and a poller
thread that hands each completion to the event loop, and every `session.run` (which releases
the GIL) lets those threads take the interpreter in between; on one core that cost 350-600 µs
of CPU per call, several times what the model and the runtime's own code cost (see
benchmarks/runtime/notes.md). Here a call is read, run and answered within the loop's
socket read, like the HTTP server's: the unbatched inline models are answered without a task,
everything else (batching, worker threads, deadlines) goes through the same servicers as on
grpc.aio.

What it speaks: unary and server-streaming calls (the v2 inference service, the standard
health service) without compression (a compressed message is answered UNIMPLEMENTED, as the
server accepts only `identity`); HTTP/2 flow control both ways (the client's windows are
respected when sending, ours are replenished as data is consumed); SETTINGS, PING, GOAWAY,
RST_STREAM (a call the client cancels has its handler cancelled); `grpc-timeout` (a call past
its deadline is answered DEADLINE_EXCEEDED and its handler cancelled, as grpc.aio does);
HPACK header decoding (`HeaderDecoder`, with the `hpack` package's static and
Huffman tables). Responses use literal header fields without
indexing, so the server keeps no encoder state. No TLS, no HTTP/1.1 upgrade (clients use
prior knowledge, as every gRPC client does for plaintext), no server push.

A malformed request (RFC 9113, sections 8.2 and 8.3: a name with uppercase or forbidden
characters, a value with NUL, CR or LF, a connection-specific field, `te` other than
`trailers`, pseudo-headers unknown, repeated, after regular ones or missing) is reset with
PROTOCOL_ERROR, as section 8.1.1 asks. One sweep every few seconds closes, with GOAWAY
NO_ERROR, the connections with no stream open and nothing received for `idle_timeout`
seconds, and those whose preface and SETTINGS have not come within `handshake_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote

import grpc
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113, section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
SELF_DEPENDENT = 0x2  # not a flag of HEADERS: marks, inside the server, a stream that
# names itself as its dependency (a stream error, RFC 9113 section 5.3.1)

# Error codes (section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11

# Settings (section 6.5.2).
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 1, 2, 3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 4, 5, 6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384
# What the server lets a client send: frames up to 1 MiB (large tensors take fewer frames),
# 1 MiB in flight per stream (replenished as it arrives), 1 GiB per connection.
OWN_MAX_FRAME = 1 << 20
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 1 << 30
MAX_HEADER_BLOCK = 64 * 1024
# A header block takes at most this many CONTINUATION frames (empty ones would otherwise
# keep the loop busy for nothing, CVE-2024-27316's kind of flood).
MAX_CONTINUATIONS = 64
# grpc-message is cut to this many characters, so that trailers stay well inside a client's
# 16 KiB frames and grpcio's metadata limit whatever a message quotes (a method's name).
MAX_STATUS_MESSAGE = 1024

FRAME = struct.Struct(">HBBBL")  # length (24 bits, as 16 + 8), type, flags, stream id
TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

# Seconds before a client's deadline at which the server gives up on the call itself, so
# that it answers (and counts) the call rather than being cancelled by the client's expiry.
DEADLINE_MARGIN = 0.01

OK, UNKNOWN, INTERNAL = 0, 2, 13
DEADLINE_EXCEEDED, UNIMPLEMENTED, UNAVAILABLE = 4, 12, 14
RESOURCE_EXHAUSTED = 8

# Request header validation (RFC 9113, sections 8.2 and 8.3): a malformed request is a stream
# error (RST_STREAM PROTOCOL_ERROR), not a gRPC status. The characters of names and values
# are checked by the HPACK decoder as it decodes literals (see `HeaderDecoder.malformed`);
# the request's fields themselves where the server reads them (`_Connection._header_block`).
BAD_NAME = re.compile(r"[\x00-\x20A-Z:\x7f-\xff]")  # a pseudo-header's leading colon aside
BAD_VALUE = re.compile(r"[\x00\r\n]")
CONNECTION_HEADERS = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
)


# Names found well-formed (short ones, a bounded number): a client sends the same few.
GOOD_NAMES: set[str] = set()
WHITESPACE = (" ", "\t")


def bad_field(name: str, value: str) -> str | None:
    """What makes this field malformed (RFC 9113, section 8.2.1), or None: a name empty or
    with a character of 0x00-0x20, A-Z, 0x7f-0xff, or a colon past a pseudo-header's first;
    a value with NUL, CR or LF, or starting or ending with a space or tab."""
    if name not in GOOD_NAMES:
        bare = name[1:] if name[:1] == ":" else name
        if not bare or BAD_NAME.search(bare):
            return f"header name {name!r}"
        if len(name) <= 64 and len(GOOD_NAMES) < 1024:
            GOOD_NAMES.add(name)
    if value[:1] in WHITESPACE or value[-1:] in WHITESPACE:
        return f"value of {name} {value!r}"
    if not value.isprintable() and BAD_VALUE.search(value):  # (tabs, obs-text are allowed)
        return f"value of {name} {value!r}"
    return None


def malformed_trailers(headers: list[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name[:1] == ":":
            return f"pseudo-header {name} in trailers"
        if name in CONNECTION_HEADERS or (name == "te" and value != "trailers"):
            return f"connection-specific header {name}"
    return None


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    """An HPACK integer with a `prefix`-bit prefix; `first` holds the first byte's other bits."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


# `:status: 200` (static index 8), then content-type (static name 31) application/grpc.
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + hpack_int(16, 7) + b"application/grpc"
OK_TRAILERS = literal(b"grpc-status", b"0")


def status_block(code: int, message: str) -> bytes:
    block = literal(b"grpc-status", str(code).encode())
    if len(message) > MAX_STATUS_MESSAGE:
        message = message[: MAX_STATUS_MESSAGE - 3] + "..."
    if message:
        # Percent-encoded as the gRPC spec asks (space and printable ASCII but % kept).
        safe = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
        block += literal(b"grpc-message", quote(message, safe=safe).encode())
    return block


def parse_timeout(value: str) -> float | None:
    m = TIMEOUT.fullmatch(value)  # `$` alone would let a trailing newline through
    if m is None:
        return None
    return int(m.group(1)) * TIMEOUT_UNITS[m.group(2)]


class HPACKError(Exception):
    """A header block that does not decode: a connection error (COMPRESSION_ERROR)."""


STATIC = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in HeaderTable.STATIC_TABLE]


class _Malformed(tuple[str, str]):
    """A dynamic table entry that is not a well-formed field (RFC 9113, section 8.2.1)."""

    __slots__ = ()


class HeaderDecoder:
    """HPACK decoding (RFC 7541) for one connection. Names and values come out as latin-1
    text (gRPC's headers are ASCII). Decoded lists are limited to `max_list` bytes (counted
    as the RFC counts entries), which also bounds what indexing can repeat.

    After `decode`, `malformed` says why a field of the block is not well-formed (RFC 9113,
    section 8.2.1), or is None. Only literals are checked, as they are decoded: the static
    table's fields are well-formed, and a dynamic entry keeps the verdict it had when added,
    so the fields a client sends indexed (most of a request's) cost nothing to check."""

    def __init__(self, max_table: int = 4096, max_list: int = MAX_HEADER_BLOCK) -> None:
        self.max_table = max_table  # the most SETTINGS_HEADER_TABLE_SIZE lets a client use
        self.limit = max_table
        self.max_list = max_list
        self.table: list[tuple[str, str]] = []  # newest first (index 62 = table[0])
        self.size = 0
        self.malformed: str | None = None

    @staticmethod
    def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
        mask = (1 << prefix) - 1
        value = data[pos] & mask
        pos += 1
        if value < mask:
            return value, pos
        shift = 0
        while True:
            if pos >= len(data) or shift > 28:
                raise HPACKError("truncated or oversized integer")
            byte = data[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    def _string(self, data: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(data):
            raise HPACKError("truncated string")
        huffman = data[pos] & 0x80
        length, pos = self._int(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise HPACKError("truncated string")
        raw = data[pos:end]
        if huffman:
            try:
                raw = decode_huffman(raw)
            except Exception as exc:
                raise HPACKError(f"bad Huffman string: {exc}") from None
        return raw.decode("latin-1"), end

    def _entry(self, index: int) -> tuple[str, str]:
        if 0 < index <= 61:
            return STATIC[index - 1]
        if 61 < index <= 61 + len(self.table):
            return self.table[index - 62]
        raise HPACKError(f"no header table entry {index}")

    def _add(self, name: str, value: str, bad: bool) -> None:
        size = len(name) + len(value) + 32
        self.table.insert(0, _Malformed((name, value)) if bad else (name, value))
        self.size += size
        self._shrink()

    def _shrink(self) -> None:
        table = self.table
        while self.size > self.limit and table:
            name, value = table.pop()
            self.size -= len(name) + len(value) + 32

    def decode(self, data: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        total = 0
        pos, end = 0, len(data)
        table = self.table
        malformed = None
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # indexed (the common case, inlined)
                if byte != 0xFF:
                    index = byte & 0x7F
                    pos += 1
                else:
                    index, pos = self._int(data, pos, 7)
                if 0 < index <= 61:
                    header = STATIC[index - 1]
                elif 61 < index <= 61 + len(table):
                    header = table[index - 62]
                    if header.__class__ is _Malformed and malformed is None:
                        malformed = bad_field(*header)
                else:
                    raise HPACKError(f"no header table entry {index}")
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                if headers:
                    raise HPACKError("table size update after a header field")
                size, pos = self._int(data, pos, 5)
                if size > self.max_table:
                    raise HPACKError(f"table size {size} over {self.max_table}")
                self.limit = size
                self._shrink()
                continue
            else:
                indexing = byte & 0x40
                index, pos = self._int(data, pos, 6 if indexing else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                header = (name, value)
                why = bad_field(name, value)
                if why is not None and malformed is None:
                    malformed = why
                if indexing:
                    self._add(name, value, why is not None)
            total += len(header[0]) + len(header[1]) + 32
            if total > self.max_list:
                raise HPACKError(f"header list over {self.max_list} bytes")
            headers.append(header)
        self.malformed = malformed
        return headers


class AbortError(Exception):
    """Raised by `Context.abort`: the call ends with this status."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _code(code: Any) -> int:
    return int(code.value[0]) if isinstance(code, grpc.StatusCode) else int(code)


class Context:
    """What a servicer sees of its call (the part of grpc.aio's context the runtime uses)."""

    __slots__ = ("_deadline", "_loop", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        self._loop = loop
        self._deadline = deadline
        self.expired = False  # the transport ended the call at its deadline

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return self._deadline - self._loop.time()

    async def abort(self, code: Any, details: str = "") -> NoReturn:
        raise AbortError(_code(code), details)

    def abort_now(self, code: Any, details: str = "") -> NoReturn:
        raise AbortError(_code(code), details)


@dataclass(frozen=True, slots=True)
class Method:
    """One gRPC method. `handler(request, context)` is a coroutine (unary) or an async
    iterator of responses (`streaming`). `now(request, context)`, when given, is tried first
    on the loop's read: it returns the response, or None to let `handler` take the call."""

    handler: Callable[[Any, Context], Any]
    deserialize: Callable[[bytes], Any]
    serialize: Callable[[Any], bytes]
    streaming: bool = False
    now: Callable[[Any, Context], Any] | None = None


class _Stream:
    __slots__ = (
        "body",
        "context",
        "deadline",
        "done",
        "encoding",
        "headers_sent",
        "id",
        "path",
        "pending",
        "remote_done",
        "task",
        "timer",
        "trailers",
        "unacked",
        "window",
    )

    def __init__(self, sid: int, window: int) -> None:
        self.id = sid
        self.path = ""
        self.deadline: float | None = None
        self.encoding = ""
        self.body = bytearray()
        self.unacked = 0  # bytes received and not yet given back by a WINDOW_UPDATE
        self.window = window  # what the client lets the server send on this stream
        self.pending = bytearray()  # DATA payload waiting for the client's windows
        self.trailers: bytes | None = None  # sent once `pending` is out
        self.headers_sent = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.context: Context | None = None
        self.done = False  # the server has ended the stream (trailers queued or sent)
        self.remote_done = False  # the client has ended its side (END_STREAM seen)


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None  # asyncio's or uvloop's transport (not a subclass)
        self.buffer = bytearray()
        self.preface = False
        self.decoder = HeaderDecoder()
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW  # the client's connection window for the server
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self.consumed = 0  # bytes received on the connection not yet given back
        self.continuation: tuple[int, int, bytearray] | None = None
        self.continuations = 0  # CONTINUATION frames of the block in `continuation`
        self.buffered = 0  # bytes of request bodies held, over all streams
        # Calls the client may still cancel before the server stops taking new ones from
        # it (each answered call gives one back): rapid reset, CVE-2023-44487.
        self.reset_budget = 2 * server.max_streams
        self.blocked: dict[int, _Stream] = {}
        self.going_away = False
        self.closed = False
        self.out: list[bytes] | None = None  # writes held back during a read
        # For the server's sweep: when the connection was opened, whether the client's
        # preface and SETTINGS have come, and when it last had bytes in or a stream open.
        self.opened = self.last_active = self.loop.time()
        self.handshaken = False

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.connections.add(self)
        settings = b"".join(
            struct.pack(">HL", k, v)
            for k, v in (
                (SETTINGS_ENABLE_PUSH, 0),
                (SETTINGS_MAX_CONCURRENT_STREAMS, self.server.max_streams),
                (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (SETTINGS_MAX_FRAME_SIZE, OWN_MAX_FRAME),
                (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK),
            )
        )
        self.transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", CONNECTION_WINDOW - DEFAULT_WINDOW))
        )
        if self.server.closing:
            self.go_away()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self.streams.clear()
        self.blocked.clear()
        self.buffered = 0
        self.server.wake()

    def pause_writing(self) -> None:
        """The client does not read what the server writes: stop reading it (and so stop
        answering its PINGs, SETTINGS and calls) until it does."""
        with contextlib.suppress(Exception):
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.resume_reading()

    def _write(self, data: bytes) -> None:
        out = self.out
        if out is not None:
            out.append(data)  # sent at the end of the read, in one write
        elif self.transport is not None and not self.closed:
            self.transport.write(data)

    def go_away(self, code: int = NO_ERROR, message: str = "") -> None:
        """Refuse new streams (the ones open carry on); close once none is left."""
        if not self.going_away or code != NO_ERROR:
            self.going_away = True
            payload = struct.pack(">LL", self.last_stream, code) + message.encode()[:256]
            self._write(frame(GOAWAY, 0, 0, payload))
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.going_away and not self.streams and self.transport is not None:
            self._close()

    def _close(self) -> None:
        """Close after sending what a read held back."""
        if self.transport is None or self.closed:
            return
        if self.out:
            self.transport.write(b"".join(self.out))
            self.out.clear()
        self.transport.close()

    def overdue(self, now: float) -> str | None:
        """Why the server's sweep closes this connection now, or None. A connection with a
        stream open is never closed here."""
        if self.streams or self.closed:
            return None
        server = self.server
        limit = server.handshake_timeout
        if not self.handshaken and limit > 0 and now - self.opened > limit:
            return f"no client preface and SETTINGS within {limit:g} s"
        limit = server.idle_timeout
        if limit > 0 and now - self.last_active > limit:
            return f"idle for {limit:g} s"
        return None

    def abort_streams(self) -> None:
        """Shutdown's end: cancel what still runs and close."""
        for stream in list(self.streams.values()):
            self._end(stream, UNAVAILABLE, "the server is shutting down")
            self._cancel(stream)
        self._close()

    # -- reading -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # What the frames of one read answer (a response, a PING's ACK, WINDOW_UPDATEs) goes
        # out in one write: a client's PING often comes in the same read as its next request.
        self.out = []
        self.last_active = self.loop.time()
        try:
            self._read(data)
        finally:
            out, self.out = self.out, None
            if out and self.transport is not None and not self.closed:
                self.transport.write(b"".join(out))

    def _read(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        try:
            pos = 0
            if not self.preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection")
                    return
                if buf[: len(PREFACE)] != PREFACE:
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self.preface = True
                pos = len(PREFACE)
            end = len(buf)
            while end - pos >= 9 and not self.closed:
                hi, lo, kind, flags, sid = FRAME.unpack_from(buf, pos)
                length = (hi << 8) | lo
                if length > OWN_MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "frame larger than MAX_FRAME_SIZE")
                if end - pos - 9 < length:
                    break
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, sid & 0x7FFFFFFF, payload)
            del buf[:pos]
        except _ConnectionError as exc:
            log.debug("gRPC connection error %d: %s", exc.code, exc)
            self.go_away(exc.code, str(exc))
            self._close()
            buf.clear()
            self.continuation = None

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.continuation is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, sid, payload)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if sid != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "bad PING length")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if sid == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise _ConnectionError(FRAME_SIZE_ERROR, "bad RST_STREAM length")
            self._idle_check(sid, "RST_STREAM")
            stream = self.streams.get(sid)
            if stream is not None:
                self._forget(stream)
                self._cancel(stream)
                self.reset_budget -= 1
                if self.reset_budget < 0:
                    raise _ConnectionError(ENHANCE_YOUR_CALM, "too many calls cancelled")
        elif kind == GOAWAY:
            if sid != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "bad GOAWAY length")
            self.go_away()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client cannot push")
        elif kind == PRIORITY:
            if sid == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._write(frame(RST_STREAM, 0, sid, struct.pack(">L", FRAME_SIZE_ERROR)))
            elif int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
                self._stream_error(sid, PROTOCOL_ERROR)
        # Unknown frame types are ignored.

    def _idle_check(self, sid: int, what: str) -> None:
        """A frame other than HEADERS or PRIORITY on a stream the client has not opened."""
        if sid > self.last_stream:
            raise _ConnectionError(PROTOCOL_ERROR, f"{what} on an idle stream")

    def _stream_error(self, sid: int, code: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            self._reset(stream, code)
        else:
            self._write(frame(RST_STREAM, 0, sid, struct.pack(">L", code)))

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad SETTINGS length")
        self.handshaken = True  # the client's preface is read, and a SETTINGS frame
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, i)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.window += delta
                    if stream.window > MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR, "a stream window overflows")
            elif key == SETTINGS_ENABLE_PUSH:
                if value > 1:
                    raise _ConnectionError(PROTOCOL_ERROR, "bad ENABLE_PUSH")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise _ConnectionError(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self.peer_max_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE length")
        increment = struct.unpack(">L", payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_blocked()
            return
        self._idle_check(sid, "WINDOW_UPDATE")
        stream = self.streams.get(sid)
        if stream is None:
            return
        if increment == 0 or stream.window + increment > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR if increment else PROTOCOL_ERROR)
            return
        stream.window += increment
        if stream.id in self.blocked:
            self._flush(stream)

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            start, end = 1, len(payload) - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if end < start:
            raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
        dependency = int.from_bytes(payload[start - 5 : start - 1], "big") & 0x7FFFFFFF
        if flags & PRIORITY_FLAG and dependency == sid:
            flags |= SELF_DEPENDENT
        block = payload[start:end]
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(PROTOCOL_ERROR, "header block too large")
        if flags & END_HEADERS:
            self._header_block(sid, flags, block)
        else:
            self.continuation = (sid, flags, bytearray(block))
            self.continuations = 0

    def _continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if self.continuation is None or self.continuation[0] != sid:
            raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self.continuation[2]
        if len(block) + len(payload) > MAX_HEADER_BLOCK:
            raise _ConnectionError(PROTOCOL_ERROR, "header block too large")
        self.continuations += 1
        if self.continuations > MAX_CONTINUATIONS:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        block += payload
        if flags & END_HEADERS:
            first_flags = self.continuation[1]
            self.continuation = None
            self._header_block(sid, first_flags, bytes(block))

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        # Decoded whatever becomes of the stream: the decoder's table follows every block.
        try:
            headers = self.decoder.decode(block)
        except HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: they must end the stream
            if stream.remote_done:
                self._reset(stream, STREAM_CLOSED)
                return
            bad = self.decoder.malformed or malformed_trailers(headers)
            if bad is None and not flags & END_STREAM:
                bad = "trailers without END_STREAM"
            if bad is not None:
                self._malformed(sid, bad)
            else:
                self._end_of_request(stream)
            return
        if sid % 2 == 0 or sid <= self.last_stream:
            if sid % 2 == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "client streams are odd")
            return  # a stream this server already ended (reset, or answered early)
        self.last_stream = sid
        if flags & SELF_DEPENDENT:
            self._write(frame(RST_STREAM, 0, sid, struct.pack(">L", PROTOCOL_ERROR)))
            return
        if self.going_away or len(self.streams) >= self.server.max_streams:
            self._write(frame(RST_STREAM, 0, sid, struct.pack(">L", REFUSED_STREAM)))
            return
        if self.decoder.malformed is not None:  # a name or value's characters
            self._malformed(sid, self.decoder.malformed)
            return
        # RFC 9113, sections 8.2 and 8.3: pseudo-headers first, each of the four known ones
        # at most once; no connection-specific field; `te` only as "trailers".
        path = method = scheme = authority = None
        content_type = encoding = ""
        timeout: str | None = None
        regular = False
        why: str | None = None
        for name, value in headers:
            if name[:1] == ":":
                if regular:
                    why = f"pseudo-header {name} after a regular header"
                    break
                if name == ":path" and path is None:
                    path = value
                elif name == ":method" and method is None:
                    method = value
                elif name == ":scheme" and scheme is None:
                    scheme = value
                elif name == ":authority" and authority is None:
                    authority = value
                else:
                    why = f"unknown or repeated pseudo-header {name}"
                    break
            else:
                regular = True
                if name == "content-type":
                    content_type = value
                elif name == "grpc-timeout":
                    timeout = value
                elif name == "grpc-encoding":
                    encoding = value
                elif name == "te":
                    if value != "trailers":
                        why = f"te: {value}"
                        break
                elif name in CONNECTION_HEADERS:
                    why = f"connection-specific header {name}"
                    break
        if why is None:
            if method is None or (method != "CONNECT" and (scheme is None or path is None)):
                why = "a required pseudo-header is missing"
            elif path == "":
                why = "an empty :path"
        if why is not None:
            self._malformed(sid, why)
            return
        stream = _Stream(sid, self.peer_initial_window)
        self.streams[sid] = stream
        stream.path = path or ""
        stream.encoding = encoding
        if method != "POST" or not content_type.startswith("application/grpc"):
            self._forget(stream)
            # `:status` (static name 8) 405 or 415, literal without indexing.
            status = b"\x08" + hpack_int(3, 7) + (b"405" if method != "POST" else b"415")
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, sid, status))
            return
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                self._end(stream, INTERNAL, f"bad grpc-timeout {timeout!r}")
                return
            # The timer is set only if the call goes on past the read (see _end_of_request).
            stream.deadline = self.loop.time() + seconds
        if flags & END_STREAM:
            self._end_of_request(stream)

    def _malformed(self, sid: int, why: str) -> None:
        """A malformed request (RFC 9113, section 8.1.1): a stream error, PROTOCOL_ERROR."""
        log.debug("gRPC stream %d: malformed request: %s", sid, why)
        self._stream_error(sid, PROTOCOL_ERROR)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        self.consumed += len(payload)
        if self.consumed >= CONNECTION_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", self.consumed)))
            self.consumed = 0
        self._idle_check(sid, "DATA")
        stream = self.streams.get(sid)
        if stream is None or stream.done:
            return  # ended by the server already: ignored
        if stream.remote_done:
            self._reset(stream, STREAM_CLOSED)
            return
        if stream.unacked + len(payload) > STREAM_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        data: bytes | memoryview = payload
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            data = memoryview(payload)[1 : len(payload) - payload[0]]
        if self.buffered + len(data) > self.server.max_buffered:
            self._refuse(stream, RESOURCE_EXHAUSTED, "too much request data in flight")
            return
        body = stream.body
        body += data
        self.buffered += len(data)
        limit = self.server.max_message
        if len(body) >= 5 and int.from_bytes(body[1:5], "big") > limit:
            size = int.from_bytes(body[1:5], "big")
            self._refuse(stream, RESOURCE_EXHAUSTED, f"message of {size} bytes is over {limit}")
            return
        if len(body) > limit + 5:
            self._refuse(stream, RESOURCE_EXHAUSTED, "more than one request message")
            return
        if flags & END_STREAM:
            self._end_of_request(stream)
            return
        stream.unacked += len(payload)
        if stream.unacked >= STREAM_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, sid, struct.pack(">L", stream.unacked)))
            stream.unacked = 0

    # -- calls -------------------------------------------------------------------------------

    def _end_of_request(self, stream: _Stream) -> None:
        stream.remote_done = True
        if stream.done or stream.task is not None:
            return
        method = self.server.methods.get(stream.path)
        if method is None:
            self._end(stream, UNIMPLEMENTED, f"unknown method {stream.path}")
            return
        body = stream.body
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._end(stream, UNIMPLEMENTED, f"{stream.path} takes exactly one request message")
            return
        if body[0]:
            if stream.encoding in ("", "identity"):
                self._end(stream, INTERNAL, "compressed flag set without a grpc-encoding")
            else:
                self._end(
                    stream, UNIMPLEMENTED, f"compression {stream.encoding!r} is not supported"
                )
            return
        try:
            request = method.deserialize(bytes(body[5:]))
        except Exception as exc:
            self._end(stream, INTERNAL, f"cannot decode the request: {exc}")
            return
        self._drop_body(stream)
        context = stream.context = Context(self.loop, stream.deadline)
        if method.now is not None:
            try:
                response = method.now(request, context)
            except Exception as exc:
                self._failed(stream, exc)
                return
            if response is not None:
                self._answer(stream, method.serialize(response))
                return
        if stream.deadline is not None:
            # Already past: the handler starts and is cancelled at once, so it is counted.
            expiry = max(stream.deadline - DEADLINE_MARGIN, self.loop.time())
            stream.timer = self.loop.call_at(expiry, self._expire, stream)
        runner = self._stream_call if method.streaming else self._unary_call
        stream.task = self.loop.create_task(runner(stream, method, request, context))

    def _failed(self, stream: _Stream, exc: Exception) -> None:
        """End a call whose handler raised: its abort's status, or UNKNOWN (and a log)."""
        if isinstance(exc, AbortError):
            self._end(stream, exc.code, exc.details)
        else:
            log.error("gRPC %s failed", stream.path, exc_info=exc)
            self._end(stream, UNKNOWN, "unexpected error")

    async def _unary_call(
        self, stream: _Stream, method: Method, request: Any, context: Context
    ) -> None:
        try:
            response = await method.handler(request, context)
        except asyncio.CancelledError:
            return  # reset by the client, past its deadline, or the server stopping
        except Exception as exc:
            self._failed(stream, exc)
            return
        self._answer(stream, method.serialize(response))

    async def _stream_call(
        self, stream: _Stream, method: Method, request: Any, context: Context
    ) -> None:
        responses: AsyncIterator[Any] = method.handler(request, context)
        try:
            async for response in responses:
                if stream.done:
                    return
                self._send_message(stream, method.serialize(response))
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._failed(stream, exc)
            return
        finally:
            with contextlib.suppress(Exception):
                await responses.aclose()  # type: ignore[attr-defined]
        self._end(stream, OK, "")

    def _expire(self, stream: _Stream) -> None:
        """The client's deadline is (all but) reached: the call is answered DEADLINE_EXCEEDED
        and its handler cancelled (a request still queued never runs). The handler sees
        `context.expired`, so a servicer need not keep the deadline itself."""
        stream.timer = None
        if stream.done:
            return
        if stream.context is not None:
            stream.context.expired = True
        self._end(stream, DEADLINE_EXCEEDED, "the client's deadline passed before the answer")
        self._cancel(stream)

    # -- writing -----------------------------------------------------------------------------

    def _answer(self, stream: _Stream, message: bytes) -> None:
        """A unary call's whole answer; one write when the client's windows allow."""
        if stream.done:
            return
        size = len(message) + 5
        if (
            not stream.headers_sent
            and size <= self.send_window
            and size <= stream.window
            and size <= self.peer_max_frame
            and not self.blocked
        ):
            self.send_window -= size
            stream.window -= size
            stream.headers_sent = True
            self._answered()
            sid = stream.id
            self._write(
                frame(HEADERS, END_HEADERS, sid, RESPONSE_HEADERS)
                + FRAME.pack(size >> 8, size & 0xFF, DATA, 0, sid)
                + b"\x00"
                + len(message).to_bytes(4, "big")
                + message
                + frame(HEADERS, END_HEADERS | END_STREAM, sid, OK_TRAILERS)
            )
            self._forget(stream)
            return
        self._send_message(stream, message)
        self._end(stream, OK, "")

    def _send_message(self, stream: _Stream, message: bytes) -> None:
        if not stream.headers_sent:
            stream.headers_sent = True
            self._write(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        stream.pending += b"\x00" + len(message).to_bytes(4, "big") + message
        self._flush(stream)

    def _end(self, stream: _Stream, code: int, message: str) -> None:
        """End the call with a status (after what is still waiting to be sent)."""
        if stream.done:
            return
        stream.done = True
        self._answered()
        block = status_block(code, message) if code or message else OK_TRAILERS
        if not stream.headers_sent:  # trailers-only
            stream.headers_sent = True
            block = RESPONSE_HEADERS + block
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
            self._forget(stream)
            return
        stream.trailers = block
        self._flush(stream)

    def _answered(self) -> None:
        if self.reset_budget < 2 * self.server.max_streams:
            self.reset_budget += 1

    def _refuse(self, stream: _Stream, code: int, message: str) -> None:
        """Answer early (the request is not read to its end) and reset the stream."""
        self._end(stream, code, message)
        self._write(frame(RST_STREAM, 0, stream.id, struct.pack(">L", NO_ERROR)))
        self._forget(stream)

    def _flush(self, stream: _Stream) -> None:
        pending = stream.pending
        sid = stream.id
        while pending:
            n = min(len(pending), self.send_window, stream.window, self.peer_max_frame)
            if n <= 0:
                self.blocked[sid] = stream
                return
            self._write(frame(DATA, 0, sid, bytes(pending[:n])))
            del pending[:n]
            self.send_window -= n
            stream.window -= n
        self.blocked.pop(sid, None)
        if stream.trailers is not None:
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, sid, stream.trailers))
            stream.trailers = None
            self._forget(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self._flush(stream)

    def _reset(self, stream: _Stream, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream.id, struct.pack(">L", code)))
        self._forget(stream)
        self._cancel(stream)

    def _drop_body(self, stream: _Stream) -> None:
        self.buffered -= len(stream.body)
        stream.body = bytearray()

    def _forget(self, stream: _Stream) -> None:
        stream.done = True
        self._drop_body(stream)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        if not self.streams:
            self.last_active = self.loop.time()  # idle from now on
            self.server.wake()
            self._close_if_idle()

    @staticmethod
    def _cancel(stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        task = stream.task
        if task is not None and not task.done():
            task.cancel()


class GrpcServer:
    """Listens and serves `methods` (by path, `/package.Service/Method`)."""

    def __init__(
        self,
        methods: dict[str, Method],
        max_message: int,
        max_streams: int = 1024,
        max_buffered: int | None = None,
        idle_timeout: float = 300.0,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.methods = methods
        self.max_message = max_message
        self.max_streams = max_streams
        # Request bytes one connection may hold in unfinished messages, over all its
        # streams; past it, the stream that brings more is answered RESOURCE_EXHAUSTED.
        # (The windows are replenished as data arrives, so without it a connection could
        # hold max_streams messages of max_message bytes each.)
        # Eight messages of the largest size in flight at once on one connection (grpcio
        # sends every call of a channel on one) before any is refused.
        if max_buffered is None:
            max_buffered = max(8 * (max_message + 5), 256 * 1024 * 1024)
        self.max_buffered = max_buffered
        # A connection with no stream open and no bytes in for `idle_timeout` seconds is
        # sent GOAWAY (NO_ERROR) and closed, as gRPC servers' max-connection-idle does; one
        # whose client preface and SETTINGS have not come within `handshake_timeout` too.
        # 0 turns either off. One sweep over all connections checks them (see `sweep`).
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.connections: set[_Connection] = set()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._idle: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True
        )
        limits = [t for t in (self.idle_timeout, self.handshake_timeout) if t > 0]
        if limits:
            self._sweeper = loop.create_task(self._sweep(min(5.0, *limits) / 2))
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep(self, period: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            self.sweep(loop.time())

    def sweep(self, now: float) -> None:
        """Close, gracefully (GOAWAY NO_ERROR, the last stream processed), the connections
        idle or without a handshake past their limit (loop time `now`)."""
        for conn in list(self.connections):
            why = conn.overdue(now)
            if why is not None:
                log.debug("gRPC connection closed: %s", why)
                conn.go_away(NO_ERROR, why)

    def wake(self) -> None:
        if self._idle is not None and not any(c.streams for c in self.connections):
            self._idle.set()

    async def stop(self, grace: float | None) -> None:
        """Stop listening, tell every connection to go away (GOAWAY), let the calls in
        flight finish for up to `grace` seconds, then cancel the rest and close."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        self._idle = asyncio.Event()
        for conn in list(self.connections):
            conn.go_away()
        self.wake()
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for conn in list(self.connections):
            conn.abort_streams()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.wait_closed()
