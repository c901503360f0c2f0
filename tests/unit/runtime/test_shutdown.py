"""Graceful shutdown of the real process: SIGTERM under load loses no request."""

from __future__ import annotations

import http.client
import json
import signal
import threading
from pathlib import Path

import httpx

from tests.unit.runtime.conftest import start_subprocess, wait_until

BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}
).encode()


def test_sigterm_under_load_fails_no_request(sample_repo: Path, tmp_path: Path) -> None:
    # Batching with a long delay keeps requests queued at the moment the signal arrives.
    server = start_subprocess(
        [
            "--model",
            f"tiny={sample_repo / 'tiny'}",
            "--max-batch-size",
            "8",
            "--max-batch-delay-ms",
            "20",
            "--drain-seconds",
            "0.5",
            "--poll-interval",
            "0",
        ],
        tmp_path,
    )
    ok, failed, sent = [0], [], [0]
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        while not stop.is_set():
            try:
                conn.request(
                    "POST", "/v2/models/tiny/infer", BODY, {"Content-Type": "application/json"}
                )
            except OSError:
                # Sending failed: the server had closed this connection after telling us so, or
                # stopped listening; the request was never accepted, so it cannot have failed.
                return
            with lock:
                sent[0] += 1
            try:
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failed.append(repr(exc))
                return
            with lock:
                if response.status == 200:
                    ok[0] += 1
                else:
                    failed.append(f"{response.status} {body!r}")
            if response.getheader("connection", "").lower() == "close":
                return

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    wait_until(lambda: ok[0] >= 200)
    server.proc.send_signal(signal.SIGTERM)
    # Readiness turns off at once, while requests keep being answered.
    wait_until(lambda: httpx.get(server.url + "/v2/health/ready").status_code == 503)
    for t in threads:
        t.join(60)
    stop.set()
    assert server.proc.wait(60) == 0, server.log.read_text()
    assert failed == []
    assert ok[0] == sent[0]
    assert ok[0] > 200
    log = server.log.read_text()
    assert "shutting down" in log
    assert "stopped" in log
