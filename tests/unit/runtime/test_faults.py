"""Injected faults (for rollout tests): errors and latency, off unless set."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.unit.runtime.conftest import run_server

BODY = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}


def test_error_ratio_one_fails_every_request(sample_repo: Path) -> None:
    defaults = {"faults": {"error_ratio": 1.0}}
    with run_server(models={"tiny": sample_repo / "tiny"}, model_defaults=defaults) as srv:
        responses = [httpx.post(srv.url + "/v2/models/tiny/infer", json=BODY) for _ in range(5)]
        metrics = httpx.get(srv.url + "/metrics").text
    assert {r.status_code for r in responses} == {500}
    assert "injected fault" in responses[0].json()["error"]
    # The failure names the version that failed, as an answer does.
    assert responses[0].json()["model_name"] == "tiny"
    assert responses[0].json()["model_version"] == "1"
    labels = 'code="500",model="tiny",protocol="v2-http",version="1"'
    series = "modelpilot_inference_requests_total{" + labels + "}"
    assert f"{series} 5.0" in metrics


def test_added_latency_shows_in_the_request_histogram(sample_repo: Path) -> None:
    defaults = {"faults": {"added_latency_ms": 50}}
    with run_server(models={"tiny": sample_repo / "tiny"}, model_defaults=defaults) as srv:
        assert httpx.post(srv.url + "/v2/models/tiny/infer", json=BODY).status_code == 200
        metrics = httpx.get(srv.url + "/metrics").text
    # Not a timing assert: the request cannot have been answered before its injected delay.
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith("modelpilot_inference_request_duration_seconds_sum")
    )
    assert float(line.split()[-1]) >= 0.05
