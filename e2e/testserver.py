"""A small HTTP server for the node agent's tests: ``modelpilot/testserver``.

Serves ``/`` (who answered, and a message from ``$MESSAGE`` or ``--message-file``),
``/healthz``, ``/ready`` and ``/metrics`` in Prometheus text format.
It binds 0.0.0.0 on purpose: the node agent narrows that to the pod's address.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any


class State:
    requests = 0
    message = ""
    lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server_version = "modelpilot-testserver"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz" or self.path == "/ready":
            self._send(200, b"ok\n", "text/plain")
        elif self.path == "/metrics":
            with State.lock:
                count = State.requests
            text = (
                "# HELP testserver_requests_total Requests answered on /.\n"
                "# TYPE testserver_requests_total counter\n"
                f"testserver_requests_total {count}\n"
            )
            self._send(200, text.encode(), "text/plain; version=0.0.4")
        else:
            with State.lock:
                State.requests += 1
            host, port = address(self.server)
            body = {
                "pod": os.environ.get("HOSTNAME", ""),
                "address": f"{host}:{port}",
                "message": State.message,
            }
            self._send(200, json.dumps(body).encode())


def address(server: ThreadingHTTPServer | Any) -> tuple[str, int]:
    host, port = server.server_address[:2]
    return (host.decode() if isinstance(host, bytes) else str(host)), int(port)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--message-file", help="answer with this file's text as message")
    args = parser.parse_args()
    State.message = os.environ.get("MESSAGE", "")
    if args.message_file:
        with open(args.message_file) as f:
            State.message = f.read().strip()
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    host, port = address(server)
    print(f"listening on {host}:{port} ({socket.gethostname()})", flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        del frame
        print(f"signal {signum}: shutting down", flush=True)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
