"""A small HTTP/1.1 server on asyncio: one `asyncio.Protocol` per connection, httptools
for parsing. It exists because the request path must cost microseconds: no framework, no
task per request unless the handler has to wait (batching, worker threads).

What it does: keep-alive and pipelining (answers in request order), `Expect: 100-continue`,
bodies with Content-Length or chunked, a body size limit enforced from the headers (a body
over it is refused with 413 before it is read, and the rest of it is drained and dropped),
limits on the request head (URL 414; header bytes and count 431, checked as the bytes
arrive), read timeouts (a head not complete within `header_timeout`, or a body that stalls
for `body_timeout`, is answered 408 and closed), write flow control (a client that does not
read its answers is not read from either), HEAD (the GET answer without its body), an idle
keep-alive timeout, and a graceful stop (no new connections; requests already received
are answered; every connection is told `Connection: close` on its next answer and closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson

log = logging.getLogger(__name__)

STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
JSON = b"application/json"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "started")

    def __init__(
        self,
        method: bytes,
        path: str,
        query: str,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.started = time.perf_counter()


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls(status, orjson.dumps({"error": message}))


Handler = Callable[[Request], "Response | Awaitable[Response]"]


class _StopParsingError(Exception):
    """Raised from a parser callback to stop parsing this connection's input."""


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.handler = server.handler
        self.max_body = server.max_body
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[Request] = deque()
        self.busy = False
        self.in_message = False
        self.closing = False
        self.paused = False
        self.discarding = False
        self.write_paused = False
        self.last_active = time.monotonic()
        # Reading a request head (request line and headers): since when, and how many bytes.
        self.reading_head = True
        self.head_started = self.last_active
        self._head_bytes = 0
        self._header_count = 0
        # Reading a body: since when (None: not reading one).
        self.body_started: float | None = None
        self._method = b""
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._reject: tuple[int, str] | None = None

    # -- transport events -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.connections.discard(self)
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            if self._reject is not None:
                self._refuse(*self._reject)
            else:
                self._refuse(400, f"malformed HTTP request: {exc}")
            return
        if self.reading_head and self.in_message:
            # Counted after parsing, so a head and its body in one read never count as head;
            # a head still incomplete past the limit is refused before the parser buffers more.
            self._head_bytes += len(data)
            if self._head_bytes > self.server.max_head_bytes:
                self._refuse(
                    431, f"request line and headers are over {self.server.max_head_bytes} bytes"
                )

    # -- write flow control ------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The client does not read its answers: stop reading (and answering) its requests."""
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is None:
            return
        self._drain_waiting()
        if not self.paused:
            self.transport.resume_reading()

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.head_started = time.monotonic()
        self._head_bytes = 0
        self._url = b""
        self._headers = {}
        self._header_count = 0
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.max_url_bytes:
            self._reject = (414, f"the URL is over {self.server.max_url_bytes} bytes")
            raise _StopParsingError

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.server.max_headers:
            self._reject = (431, f"more than {self.server.max_headers} header fields")
            raise _StopParsingError
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self._head_bytes = 0
        self.body_started = time.monotonic()
        length = self._headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                self._reject = (400, f"bad Content-Length header {length!r}")
                raise _StopParsingError from None
            if size > self.max_body:
                self._reject = (
                    413,
                    f"request body of {size} bytes is over the limit of {self.max_body} bytes",
                )
                raise _StopParsingError
        expect = self._headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self.transport is not None:
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body:
            self._reject = (
                413,
                f"request body is over the server's limit of {self.max_body} bytes",
            )
            raise _StopParsingError
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.reading_head = True
        self.body_started = None
        if self.transport is None:
            return
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            self.parser.get_method(),
            path,
            query,
            self._headers,
            body,
            self.parser.should_keep_alive(),
        )
        if self.busy or self.write_paused:
            self.waiting.append(request)
            if len(self.waiting) > 32 and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            return
        self._start(request)

    # -- answering ---------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        head = request.method == b"HEAD"
        if head:
            # Answered as the GET it stands for, without the body (RFC 9110, 9.3.2).
            request.method = b"GET"
        try:
            result = self.handler(request)
        except Exception:
            log.exception("unhandled error answering %s", request.path)
            result = Response.error(500, "internal server error")
        if head:
            request.method = b"HEAD"
        if isinstance(result, Response):
            self._send(request, result)
            return
        self.busy = True
        task = asyncio.ensure_future(result)
        task.add_done_callback(lambda t: self._finished(request, t))

    def _finished(self, request: Request, task: asyncio.Future[Response]) -> None:
        self.busy = False
        try:
            response = task.result()
        except Exception:
            log.exception("unhandled error answering %s", request.path)
            response = Response.error(500, "internal server error")
        self._send(request, response)
        self._drain_waiting()

    def _drain_waiting(self) -> None:
        while (
            self.waiting and not self.busy and not self.write_paused and self.transport is not None
        ):
            self._start(self.waiting.popleft())
        if self.paused and not self.waiting and self.transport is not None:
            self.paused = False
            if not self.write_paused:
                self.transport.resume_reading()

    def _send(self, request: Request, response: Response) -> None:
        transport = self.transport
        if transport is None:
            return
        keep = request.keep_alive and not self.closing
        body = response.body
        parts = [
            STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} Unknown\r\n".encode(),
            b"content-type: ",
            response.content_type,
            b"\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        if response.headers:
            for name, value in response.headers:
                parts += [name, b": ", value, b"\r\n"]
        if not keep:
            parts.append(b"connection: close\r\n")
        parts += [b"\r\n", b"" if request.method == b"HEAD" else body]
        transport.write(b"".join(parts))
        self.last_active = time.monotonic()
        if not keep:
            self.waiting.clear()
            transport.close()
            self.transport = None

    def _refuse(self, status: int, message: str) -> None:
        """Answer an unusable request and close, draining what the client still sends so it
        reads our answer instead of a connection reset."""
        transport = self.transport
        if transport is None:
            return
        self.discarding = True
        self.waiting.clear()
        body = orjson.dumps({"error": message})
        transport.write(
            STATUS_LINES[status]
            + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        if transport.can_write_eof():
            transport.write_eof()
        loop = asyncio.get_running_loop()
        loop.call_later(self.server.linger, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    @property
    def idle(self) -> bool:
        return not self.busy and not self.in_message and not self.waiting

    @property
    def unanswered(self) -> bool:
        """Whether a received request still waits for its answer (a request still being read
        is not received yet)."""
        return self.busy or bool(self.waiting)

    def overdue(self, now: float) -> str | None:
        """Why this connection is past a read timeout, or None."""
        server = self.server
        if self.discarding or self.unanswered:
            return None
        if (
            self.reading_head
            and self.in_message
            and now - self.head_started > server.header_timeout
        ):
            return f"the request head did not arrive within {server.header_timeout:g} s"
        if self.body_started is not None and now - self.last_active > server.body_timeout:
            return f"the request body stalled for {server.body_timeout:g} s"
        if self.idle and now - self.last_active > server.keepalive_timeout:
            return ""  # idle keep-alive connection: closed without an answer
        return None

    def start_closing(self) -> None:
        self.closing = True


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        max_body: int = 64 * 1024 * 1024,
        keepalive_timeout: float = 75.0,
        linger: float = 2.0,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        max_head_bytes: int = 64 * 1024,
        max_url_bytes: int = 16 * 1024,
        max_headers: int = 100,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.linger = linger
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_head_bytes = max_head_bytes
        self.max_url_bytes = max_url_bytes
        self.max_headers = max_headers
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, **kwargs: Any) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_address=True, backlog=2048, **kwargs
        )
        self._sweeper = loop.create_task(self._sweep())
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def _sweep(self) -> None:
        period = min(5.0, self.keepalive_timeout, self.header_timeout, self.body_timeout) / 2
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self.connections):
                why = conn.overdue(now)
                if why == "":
                    conn._abort()
                elif why is not None:
                    conn._refuse(408, why)

    async def stop(self, timeout: float, idle_grace: float = 0.5) -> None:
        """Stop accepting, answer what was received, then close every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.start_closing()
        deadline = time.monotonic() + timeout
        # A client may be writing its next request on an idle keep-alive connection right now:
        # give it `idle_grace` to arrive (it is answered with Connection: close) before closing.
        grace_end = time.monotonic() + idle_grace
        while self.connections and time.monotonic() < deadline:
            now = time.monotonic()
            for conn in list(self.connections):
                # A request still being read (a stalled head or body) was never received: it
                # does not hold the shutdown up any more than an idle connection does.
                if not conn.unanswered and now >= grace_end:
                    conn._abort()
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn._abort()
        # Let the closed transports release their sockets before the loop may end.
        await asyncio.sleep(0)
        if self._sweeper is not None:
            self._sweeper.cancel()
