"""The node agent's kubelet API: the metrics text, the /proc counters, logs and auth."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e import kubeletapi
from e2e.kubeletapi import (
    Accounting,
    Authorizer,
    Caller,
    ContainerUsage,
    KubeletApi,
    LogQuery,
    LogSource,
    RunningContainer,
    caller_from_cert,
    read_log,
    render_resource_metrics,
    split_runs,
    subresource,
)
from e2e.pki import Pki

MARK = b'--- 2026-12-03T06:00:00Z start ["server"]\n'


def usage(ns: str, pod: str, name: str, cpu: float, mem: int) -> ContainerUsage:
    return ContainerUsage(RunningContainer(ns, pod, f"uid-{pod}", name, 1, 1700000000.5), cpu, mem)


def test_resource_metrics_carry_what_metrics_server_reads() -> None:
    text = render_resource_metrics(
        [
            usage("ns1", "p1", "a", 1.5, 100),
            usage("ns1", "p1", "b", 0.25, 50),
            usage("ns2", "p2", "a", 2.0, 10),
        ],
        now=1700000100.0,
    )
    families = {f.name: f for f in text_string_to_metric_families(text)}
    cpu = {
        (s.labels["namespace"], s.labels["pod"], s.labels["container"]): s
        for s in families["container_cpu_usage_seconds"].samples
    }
    assert cpu[("ns1", "p1", "a")].value == 1.5
    assert cpu[("ns1", "p1", "a")].timestamp == 1700000100.0
    pods = {s.labels["pod"]: s.value for s in families["pod_cpu_usage_seconds"].samples}
    assert pods == {"p1": 1.75, "p2": 2.0}
    mem = {s.labels["pod"]: s.value for s in families["pod_memory_working_set_bytes"].samples}
    assert mem == {"p1": 150.0, "p2": 10.0}
    (start, *_) = families["container_start_time_seconds"].samples
    assert start.value == 1700000000.5
    assert families["node_cpu_usage_seconds"].samples[0].value > 0
    assert families["node_memory_working_set_bytes"].samples[0].value > 0
    assert families["scrape_error"].samples[0].value == 0
    # metrics-server finds each series by name followed by '{' and its labels by prefix.
    assert 'container_cpu_usage_seconds_total{container="a",namespace="ns1",pod="p1"} 1.5' in text


def test_accounting_follows_a_process_group_and_never_goes_back() -> None:
    # A parent that burns CPU in a child which then exits: the child's time stays counted.
    script = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    end = time.process_time() + 0.3\n"
        "    while time.process_time() < end: pass\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        container = RunningContainer("ns", "p", "uid", "c", proc.pid, time.time())
        acct = Accounting()
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (u,) = acct.sample([container])
            seen.append(u.cpu_seconds)
            assert u.memory_bytes > 0
            alone = len(kubeletapi.scan_groups({proc.pid})[proc.pid]) == 1
            if alone and u.cpu_seconds >= 0.3 and len(seen) > 3:
                break
            time.sleep(0.05)
        assert seen == sorted(seen)
        assert seen[-1] >= 0.3
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Gone: left out rather than reported with zero memory.
    assert acct.sample([container]) == []


def test_log_runs_previous_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(MARK + b"one\ntwo\n" + MARK + b"three\nfour\nfive\n")
    assert split_runs(log.read_bytes()) == [b"one\ntwo\n", b"three\nfour\nfive\n"]
    assert read_log(log, LogQuery()) == (b"three\nfour\nfive\n", log.stat().st_size)
    assert read_log(log, LogQuery(tail=2))[0] == b"four\nfive\n"  # type: ignore[index]
    assert read_log(log, LogQuery(tail=0))[0] == b""  # type: ignore[index]
    assert read_log(log, LogQuery(previous=True))[0] == b"one\ntwo\n"  # type: ignore[index]
    assert read_log(log, LogQuery(limit_bytes=4))[0] == b"thre"  # type: ignore[index]
    log.write_bytes(MARK + b"only\n")
    assert read_log(log, LogQuery(previous=True)) is None
    q = LogQuery.parse({"tailLines": ["3"], "follow": ["true"], "timestamps": ["true"]})
    assert q == LogQuery(tail=3, follow=True)


def test_follow_streams_until_the_run_ends(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(MARK + b"a\n")
    running = threading.Event()
    running.set()
    got: list[bytes] = []
    offset = log.stat().st_size

    def reader() -> None:
        source = LogSource(log, running.is_set)
        got.extend(kubeletapi.follow(source, offset, threading.Event()))

    t = threading.Thread(target=reader)
    t.start()
    with log.open("ab") as f:
        f.write(b"b\n")
        f.flush()
        time.sleep(0.4)
        f.write(b"c\n" + MARK + b"next run\n")
    t.join(5)
    assert not t.is_alive()
    assert b"".join(got) == b"b\nc\n"


@pytest.mark.parametrize(
    ("path", "sub"),
    [
        ("/metrics/resource", "metrics"),
        ("/metrics", "metrics"),
        ("/containerLogs/ns/p/c", "proxy"),
        ("/stats/summary", "stats"),
        ("/logs/", "log"),
        ("/metricsx", "proxy"),
    ],
)
def test_paths_map_to_the_kubelets_subresources(path: str, sub: str) -> None:
    assert subresource(path) == sub


def test_a_certificate_names_user_and_groups() -> None:
    cert = {
        "subject": (
            (("organizationName", "system:nodes"),),
            (("organizationName", "extra"),),
            (("commonName", "system:node:n1"),),
        )
    }
    assert caller_from_cert(cert) == Caller("system:node:n1", ("system:nodes", "extra"))
    assert caller_from_cert(None) is None
    assert caller_from_cert({"subject": ()}) is None


class FakeKube:
    """Answers TokenReviews and SubjectAccessReviews; allows one user the metrics."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float = 5,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        assert body is not None
        self.calls.append(body)
        if body["kind"] == "TokenReview":
            ok = body["spec"]["token"] == "good"
            user = {"username": "tok-user", "groups": ["g"]}
            status = {"authenticated": ok, "user": user if ok else {}}
        else:
            spec = body["spec"]
            allowed = spec["user"] in ("metrics-reader", "tok-user") and (
                spec["resourceAttributes"]["subresource"] == "metrics"
            )
            status = {"allowed": allowed}
        return 201, json.dumps({**body, "status": status}).encode()


class FakeNode:
    def __init__(self, log: Path) -> None:
        self.log = log

    def running_containers(self) -> list[RunningContainer]:
        return [RunningContainer("ns", "p", "uid", "c", os.getpgid(0), time.time() - 5)]

    def log_source(self, namespace: str, pod: str, container: str) -> LogSource | None:
        if (namespace, pod, container) == ("ns", "p", "c"):
            return LogSource(self.log, lambda: False)
        return None


@pytest.fixture
def served(tmp_path: Path) -> Any:
    pki = Pki(tmp_path / "pki")
    pki.create_ca()
    pki.issue("server", "kubelet", server=True, ips=("127.0.0.1",))
    pki.issue("reader", "metrics-reader")
    pki.issue("admin", "someone-else")
    log = tmp_path / "c.log"
    log.write_bytes(MARK + b"hello\nworld\n")
    kube = FakeKube()
    api = KubeletApi(
        FakeNode(log),
        Authorizer(kube, "n1"),
        "127.0.0.1",
        0,
        pki.folder / "server.crt",
        pki.folder / "server.key",
        pki.ca.cert,
    )
    api.start()
    try:
        yield api, pki, kube
    finally:
        api.stop()


def get(
    api: KubeletApi, pki: Pki, path: str, user: str | None, token: str = ""
) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if user:
        ctx.load_cert_chain(str(pki.folder / f"{user}.crt"), str(pki.folder / f"{user}.key"))
    req = urllib.request.Request(f"https://127.0.0.1:{api.port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def test_the_server_authenticates_and_authorizes(served: Any) -> None:
    api, pki, kube = served
    assert get(api, pki, "/healthz", None) == (200, b"ok")
    assert get(api, pki, "/metrics/resource", None)[0] == 401
    code, body = get(api, pki, "/metrics/resource", "reader")
    assert code == 200
    assert b'container_cpu_usage_seconds_total{container="c",namespace="ns",pod="p"}' in body
    assert get(api, pki, "/metrics/resource", "admin")[0] == 403
    assert get(api, pki, "/metrics/resource", None, token="good")[0] == 200
    assert get(api, pki, "/metrics/resource", None, token="bad")[0] == 401
    # Logs are nodes/proxy, which the fake denies everyone.
    assert get(api, pki, "/containerLogs/ns/p/c", "reader")[0] == 403
    reviews = [c for c in kube.calls if c["kind"] == "SubjectAccessReview"]
    assert reviews[0]["spec"]["resourceAttributes"] == {
        "verb": "get",
        "group": "",
        "version": "v1",
        "resource": "nodes",
        "subresource": "metrics",
        "name": "n1",
    }
    # Decisions are cached.
    before = len(kube.calls)
    get(api, pki, "/metrics/resource", "reader")
    assert len(kube.calls) == before


def test_the_server_returns_logs(served: Any, tmp_path: Path) -> None:
    api, pki, kube = served

    def allow_all(body: dict[str, Any]) -> dict[str, Any]:
        return {"allowed": True}

    kube.request = lambda method, path, body=None, **kw: (
        201,
        json.dumps({"status": allow_all(body)}).encode(),
    )
    assert get(api, pki, "/containerLogs/ns/p/c", "admin") == (200, b"hello\nworld\n")
    assert get(api, pki, "/containerLogs/ns/p/c?tailLines=1", "admin") == (200, b"world\n")
    assert get(api, pki, "/containerLogs/ns/p/c?follow=true", "admin") == (200, b"hello\nworld\n")
    assert get(api, pki, "/containerLogs/ns/p/c?previous=true", "admin")[0] == 400
    assert get(api, pki, "/containerLogs/ns/p/x", "admin")[0] == 404
    assert get(api, pki, "/containerLogs/ns/p", "admin")[0] == 400
