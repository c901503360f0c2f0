"""The metric contract: exactly these names, fed by real traffic, on /metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelpilot_runtime.metrics import CONTRACT
from tests.unit.runtime.conftest import run_server, send_while_held

# Written out again on purpose: renaming a metric must fail here, not only change the tuple.
PINNED = {
    "modelpilot_inference_requests_total": ("model", "version", "protocol", "code"),
    "modelpilot_inference_request_duration_seconds": ("model", "version"),
    "modelpilot_inference_queue_duration_seconds": ("model", "version"),
    "modelpilot_inference_compute_duration_seconds": ("model", "version"),
    "modelpilot_inference_batch_size": ("model", "version"),
    "modelpilot_inference_pending_requests": ("model", "version"),
    "modelpilot_inference_rejected_total": ("model", "version", "reason"),
    "modelpilot_model_ready": ("model", "version", "provider"),
    "modelpilot_model_load_duration_seconds": ("model", "version", "stage"),
    "modelpilot_prediction_class_total": ("model", "version", "class"),
    "modelpilot_cache_requests_total": ("model", "version", "result"),
    "modelpilot_build_info": ("version", "onnxruntime", "python"),
}


def scrape(client: httpx.Client) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def test_contract_names_are_pinned() -> None:
    assert set(CONTRACT) == set(PINNED)


def test_metrics_follow_the_contract(sample_repo: Path) -> None:
    with run_server(model_repository=sample_repo) as srv, httpx.Client(base_url=srv.url) as client:
        body = {
            "inputs": [{"name": "input", "shape": [3, 8], "datatype": "FP32", "data": [1.0] * 24}]
        }
        for _ in range(4):
            assert client.post("/v2/models/tiny/infer", json=body).status_code == 200
        assert client.post("/v2/models/tiny/infer", content=b"{").status_code == 400
        assert client.post("/v2/models/whatever/infer", content=b"{}").status_code == 404
        samples = scrape(client)
    for name, labels in PINNED.items():
        present = [
            lab
            for n, rows in samples.items()
            if n.startswith(name.removesuffix("_total"))
            for lab, _ in rows
        ]
        assert present, f"{name} missing"
        for lab in present:
            assert set(labels) <= set(lab), (name, lab)
    assert (
        value(
            samples,
            "modelpilot_inference_requests_total",
            model="tiny",
            code="200",
            protocol="v2-http",
        )
        == 4
    )
    assert value(samples, "modelpilot_inference_requests_total", model="tiny", code="400") == 1
    # An unknown model name never becomes a label value.
    assert value(samples, "modelpilot_inference_requests_total", model="_unknown", code="404") == 1
    assert not any(lab.get("model") == "whatever" for rows in samples.values() for lab, _ in rows)
    assert value(samples, "modelpilot_inference_batch_size_count", model="tiny") == 4
    assert value(samples, "modelpilot_inference_compute_duration_seconds_count", model="tiny") == 4
    assert (
        value(samples, "modelpilot_model_ready", model="tiny", provider="CPUExecutionProvider") == 1
    )
    assert value(samples, "modelpilot_model_load_duration_seconds", model="tiny", stage="load") > 0
    # 4 requests of 3 identical rows: 12 predictions of one class.
    classes = [
        (lab["class"], v)
        for lab, v in samples["modelpilot_prediction_class_total"]
        if lab["model"] == "tiny"
    ]
    assert len(classes) == 1
    assert classes[0][1] == 12
    assert value(samples, "modelpilot_build_info") == 1


def test_cache_hits_and_misses(sample_repo: Path) -> None:
    with (
        run_server(
            model_repository=sample_repo, model_defaults={"cache": {"max_entries": 8}}
        ) as srv,
        httpx.Client(base_url=srv.url) as client,
    ):
        one = {
            "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]
        }
        two = {
            "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [2.0] * 8}]
        }
        answers = [
            client.post("/v2/models/tiny/infer", json=b).json() for b in (one, one, two, one)
        ]
        assert answers[0] == answers[1] == answers[3]
        assert answers[0] != answers[2]
        samples = scrape(client)
    assert value(samples, "modelpilot_cache_requests_total", model="tiny", result="hit") == 2
    assert value(samples, "modelpilot_cache_requests_total", model="tiny", result="miss") == 2
    # Cache hits never reach the model.
    assert value(samples, "modelpilot_inference_compute_duration_seconds_count", model="tiny") == 2


def test_every_request_is_counted_once_and_rejections_stay_out_of_the_latency_histogram(
    sample_repo: Path,
) -> None:
    # A queue of one, and ten requests that arrive together: the rest of the burst is rejected.
    defaults = {"batching": {"max_batch_size": 64, "max_delay_ms": 300, "max_queue": 1}}
    body = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}
    with run_server(models={"tiny": sample_repo / "tiny"}, model_defaults=defaults) as srv:
        codes = [status for status, _ in send_while_held(srv, "/v2/models/tiny/infer", [body] * 10)]
        with httpx.Client(base_url=srv.url) as client:
            samples = scrape(client)
    ok, rejected = codes.count(200), codes.count(429)
    assert ok + rejected == 10
    assert rejected > 0
    m = {"model": "tiny", "version": "1"}
    assert value(samples, "modelpilot_inference_requests_total", code="429", **m) == rejected
    assert value(samples, "modelpilot_inference_requests_total", code="200", **m) == ok
    assert value(samples, "modelpilot_inference_request_duration_seconds_count", **m) == ok


def test_an_unexpected_error_is_a_counted_500(
    sample_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelpilot_runtime.server import v2

    def broken_encode(*args: object) -> tuple[bytes, int | None]:
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(v2, "encode", broken_encode)
    body = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}
    deep = {"inputs": [{"name": "input", "shape": [1] * 65, "datatype": "FP32", "data": [1.0]}]}
    with (
        run_server(models={"tiny": sample_repo / "tiny"}) as srv,
        httpx.Client(base_url=srv.url) as client,
    ):
        answer = client.post("/v2/models/tiny/infer", json=body)
        too_deep = client.post("/v2/models/tiny/infer", json=deep)
        samples = scrape(client)
    assert answer.status_code == 500
    assert "encoder bug" in answer.json()["error"]
    assert too_deep.status_code == 400
    assert "dimensions" in too_deep.json()["error"]
    m = {"model": "tiny", "version": "1"}
    assert value(samples, "modelpilot_inference_requests_total", code="500", **m) == 1
    assert value(samples, "modelpilot_inference_requests_total", code="400", **m) == 1
    assert value(samples, "modelpilot_inference_requests_total", **m) == 2
