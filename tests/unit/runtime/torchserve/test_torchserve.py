"""The TorchServe backend with a real TorchServe: a .mar archived by the tests, served
through the runtime's protocols, batched by TorchServe, measured by the runtime's metrics,
its handler errors turned into answers, killed and brought back, and stopped with the server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
import yaml

from modelpilot_runtime.server.proto import inference_pb2 as pb
from modelpilot_runtime.server.proto import inference_pb2_grpc as pb_grpc
from tests.unit.runtime.conftest import RunningServer, run_server, wait_until
from tests.unit.runtime.torchserve.conftest import backend_of

# The sample handler's triggers (see sample_handler.py, which imports torch: not here).
REFUSE, RAISE, SLEEP, CONFLICT = 2.0**100, -(2.0**100), 2.0**101, 2.0**102
ROWS = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)


def v2_body(rows: np.ndarray, outputs: list[str] | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.reshape(-1).tolist(),
            }
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


def output(answer: dict[str, object], name: str) -> np.ndarray:
    outs = answer["outputs"]
    assert isinstance(outs, list)
    item = next(o for o in outs if o["name"] == name)
    return np.asarray(item["data"]).reshape(item["shape"])


def reference(ts_repo: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(ts_repo / "tiny_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(["probabilities"], {"input": rows})[0])


def test_v2_http_inference_matches_the_onnx_export(ts_server: RunningServer, ts_repo: Path) -> None:
    with httpx.Client(base_url=ts_server.url, timeout=30) as c:
        assert c.get("/v2/health/ready").status_code == 200
        meta = c.get("/v2/models/tiny_ts").json()
        answer = c.post("/v2/models/tiny_ts/versions/1/infer", json=v2_body(ROWS))
        via_onnx = c.post("/v2/models/tiny_onnx/infer", json=v2_body(ROWS))
    assert meta["platform"] == "pytorch_torchserve"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("input", "FP32", [-1, 8])
    ]
    assert answer.status_code == 200, answer.text
    got = output(answer.json(), "probabilities")
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, reference(ts_repo, ROWS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, output(via_onnx.json(), "probabilities"), atol=1e-6)


def test_grpc_and_tfserving_rest(ts_server: RunningServer, ts_repo: Path) -> None:
    with grpc.insecure_channel(ts_server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        assert stub.ModelReady(pb.ModelReadyRequest(name="tiny_ts")).ready
        request = pb.ModelInferRequest(model_name="tiny_ts")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 8])
        tensor.contents.fp32_contents.extend(ROWS[:2].reshape(-1).tolist())
        request.outputs.add(name="probabilities")
        reply = stub.ModelInfer(request, timeout=30)
    probabilities = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(probabilities, reference(ts_repo, ROWS[:2]), atol=1e-6)
    rest = httpx.post(
        ts_server.url + "/v1/models/tiny_ts:predict",
        json={"instances": ROWS[:3].tolist()},
        timeout=30,
    )
    assert rest.status_code == 200, rest.text
    predictions = rest.json()["predictions"]
    assert len(predictions) == 3
    np.testing.assert_allclose(
        [p["probabilities"] for p in predictions], reference(ts_repo, ROWS[:3]), atol=1e-6
    )


def test_concurrent_requests_reach_the_handler_in_batches(ts_server: RunningServer) -> None:
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        with httpx.Client(base_url=ts_server.url, timeout=30) as c:
            for _ in range(4):
                r = c.post("/v2/models/tiny_ts/infer", json=v2_body(ROWS[i % 4 : i % 4 + 1]))
                with lock:
                    answers.append(r)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in answers] == [200] * 64
    handler_batches = [int(output(r.json(), "handler_batch")[0, 0]) for r in answers]
    # 16 clients at once: the runtime's batcher groups them and TorchServe hands the handler
    # more than one request at a time.
    assert max(handler_batches) > 1
    metrics = httpx.get(ts_server.url + "/metrics").text
    count = _value(metrics, 'modelpilot_inference_batch_size_count{model="tiny_ts",version="1"}')
    ones = _value(
        metrics, 'modelpilot_inference_batch_size_bucket{le="1.0",model="tiny_ts",version="1"}'
    )
    assert count > ones  # some batches held more than one request


def test_metrics_follow_the_contract(ts_server: RunningServer) -> None:
    with httpx.Client(base_url=ts_server.url, timeout=30) as c:
        assert c.post("/v2/models/tiny_ts/infer", json=v2_body(ROWS[:1])).status_code == 200
        bad = v2_body(ROWS[:1])
        bad["inputs"][0]["data"][0] = REFUSE  # type: ignore[index]
        assert c.post("/v2/models/tiny_ts/infer", json=bad).status_code == 422
        metrics = c.get("/metrics").text
    labels = 'model="tiny_ts",protocol="v2-http",version="1"'
    assert _value(metrics, f'modelpilot_inference_requests_total{{code="200",{labels}}}') >= 1
    assert _value(metrics, f'modelpilot_inference_requests_total{{code="422",{labels}}}') >= 1
    assert (
        _value(
            metrics,
            'modelpilot_model_ready{model="tiny_ts",provider="TorchServe 0.12.0",version="1"}',
        )
        == 1
    )
    assert (
        _value(
            metrics,
            'modelpilot_inference_request_duration_seconds_count{model="tiny_ts",version="1"}',
        )
        >= 1
    )
    assert (
        _value(
            metrics,
            'modelpilot_inference_compute_duration_seconds_count{model="tiny_ts",version="1"}',
        )
        >= 1
    )
    assert 'modelpilot_prediction_class_total{class="' in metrics
    assert (
        'modelpilot_model_load_duration_seconds{model="tiny_ts",stage="load",version="1"}'
        in metrics
    )


@pytest.mark.parametrize(
    ("first", "status", "words"),
    [
        (REFUSE, 422, "input values must stay below 2**100"),
        (RAISE, 500, "the handler raised an exception"),
    ],
)
def test_handler_errors_become_answers_with_a_message(
    ts_server: RunningServer, first: float, status: int, words: str
) -> None:
    body = v2_body(ROWS[:1])
    body["inputs"][0]["data"][0] = first  # type: ignore[index]
    answer = httpx.post(ts_server.url + "/v2/models/tiny_ts/infer", json=body, timeout=30)
    assert answer.status_code == status
    assert words in answer.json()["error"]
    assert "tiny_ts" in answer.json()["error"]
    # The model keeps serving afterwards.
    after = httpx.post(
        ts_server.url + "/v2/models/tiny_ts/infer", json=v2_body(ROWS[:1]), timeout=30
    )
    assert after.status_code == 200


def test_a_wrong_request_is_refused_before_torchserve(ts_server: RunningServer) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 7], "datatype": "FP32", "data": [0.0] * 7}]}
    answer = httpx.post(ts_server.url + "/v2/models/tiny_ts/infer", json=body, timeout=30)
    assert answer.status_code == 400
    assert "[-1, 8]" in answer.json()["error"]


def test_torchserve_listens_on_loopback_only_and_wants_keys(ts_server: RunningServer) -> None:
    process = backend_of(ts_server).process
    java = psutil.Process(process.pid)
    listening = [c.laddr for c in java.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 5  # inference, management, metrics, two gRPC
    # Java's sockets are IPv6 ones bound to the IPv4-mapped loopback address.
    assert {addr.ip.removeprefix("::ffff:") for addr in listening} == {"127.0.0.1"}
    ports = process.ports
    anonymous = httpx.post(
        f"http://127.0.0.1:{ports.inference}/predictions/tiny_ts", json=v2_body(ROWS[:1])
    )
    assert anonymous.status_code == 400
    assert "Token Authorization failed" in anonymous.text
    listing = httpx.get(f"http://127.0.0.1:{ports.management}/models")
    assert listing.status_code == 400
    key_file = process.root / "key_file.json"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert set(json.loads(key_file.read_text())) == {"management", "inference", "API"}


def test_a_handler_that_hangs_gets_a_timeout_answer(ts_repo: Path, tmp_path: Path) -> None:
    model = tmp_path / "slow"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.mar").symlink_to(ts_repo / "tiny_ts" / "1" / "model.mar")
    config = yaml.safe_load((ts_repo / "tiny_ts" / "config.yaml").read_text())
    config["torchserve"]["response_timeout_s"] = 1
    config["warmup"] = {"runs": 0}
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    with run_server(models={"slow": model}, grpc_port=None) as srv:
        body = v2_body(ROWS[:1])
        body["inputs"][0]["data"][:2] = [SLEEP, 30.0]  # type: ignore[index]
        answer = httpx.post(srv.url + "/v2/models/slow/infer", json=body, timeout=60)
        # TorchServe stops the worker after its response timeout and answers 500.
        assert answer.status_code == 500
        assert "ran past response_timeout_s (1 s)" in answer.json()["error"]
        # TorchServe starts a fresh worker, which then serves (until then: 504 or 503).
        wait_until(
            lambda: (
                httpx.post(
                    srv.url + "/v2/models/slow/infer", json=v2_body(ROWS[:1]), timeout=60
                ).status_code
                == 200
            ),
            timeout=120,
            interval=0.5,
        )


def test_killed_torchserve_is_restarted_and_stopped_with_the_server(ts_repo: Path) -> None:
    with run_server(models={"tiny_ts": ts_repo / "tiny_ts"}, grpc_port=None) as srv:
        backend = backend_of(srv)
        first = backend.process
        old_pid, old_root = first.pid, first.root
        os.killpg(old_pid, signal.SIGKILL)

        def ready() -> bool:
            return httpx.get(srv.url + "/v2/models/tiny_ts/ready").status_code == 200

        wait_until(lambda: not ready(), timeout=30, interval=0.02)
        unready = httpx.post(srv.url + "/v2/models/tiny_ts/infer", json=v2_body(ROWS[:1]))
        assert unready.status_code == 503
        metrics = httpx.get(srv.url + "/metrics").text
        assert (
            'modelpilot_model_ready{model="tiny_ts",provider="TorchServe 0.12.0",version="1"} 0.0'
            in metrics
        )
        wait_until(ready, timeout=120, interval=0.1)
        assert backend.restarts == 1
        assert backend.process.pid != old_pid
        assert not old_root.exists()
        answer = httpx.post(
            srv.url + "/v2/models/tiny_ts/infer", json=v2_body(ROWS[:1]), timeout=30
        )
        assert answer.status_code == 200
        group = [p for p in psutil.process_iter() if _pgid(p.pid) == backend.process.pid]
        assert len(group) >= 2  # Java and at least one Python worker
        root = backend.process.root
    for proc in group:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    assert not root.exists()


def _ts_requests(server: RunningServer, model: str = "tiny_ts") -> float:
    """Inference requests TorchServe itself has answered (its own Prometheus counter)."""
    text = backend_of(server, model).process.metrics_text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ts_inference_requests_total{")
    )


def test_a_batch_reaches_the_handler_as_one_torchserve_request(ts_server: RunningServer) -> None:
    before = _ts_requests(ts_server)
    answer = httpx.post(ts_server.url + "/v2/models/tiny_ts/infer", json=v2_body(ROWS), timeout=30)
    assert answer.status_code == 200, answer.text
    # The four rows went to TorchServe as one request, and its handler got them in one call.
    assert _ts_requests(ts_server) - before == 1
    assert output(answer.json(), "handler_batch").reshape(-1).tolist() == [4, 4, 4, 4]


@pytest.mark.parametrize(
    ("first", "status", "words"),
    [
        (REFUSE, 422, "input values must stay below 2**100"),
        (CONFLICT, 409, "this request alone is refused (409)"),
    ],
)
def test_a_refused_request_fails_alone_and_everything_is_counted_once(
    ts_server: RunningServer, ts_repo: Path, first: float, status: int, words: str
) -> None:
    labels = 'model="tiny_ts",protocol="v2-http",version="1"'
    requests_200 = f'modelpilot_inference_requests_total{{code="200",{labels}}}'
    requests_bad = f'modelpilot_inference_requests_total{{code="{status}",{labels}}}'
    durations = 'modelpilot_inference_request_duration_seconds_count{model="tiny_ts",version="1"}'
    before = httpx.get(ts_server.url + "/metrics").text
    results: dict[int, httpx.Response] = {}

    def send(i: int, body: dict[str, object]) -> None:
        results[i] = httpx.post(ts_server.url + "/v2/models/tiny_ts/infer", json=body, timeout=60)

    # One request holds the model for a moment, so the next five queue and run as a batch.
    hold = v2_body(ROWS[:1])
    hold["inputs"][0]["data"][:2] = [SLEEP, 0.5]  # type: ignore[index]
    holder = threading.Thread(target=send, args=(0, hold))
    holder.start()
    wait_until(lambda: backend_of(ts_server) is not None and _running(ts_server), timeout=30)
    bad = v2_body(ROWS[:1])
    bad["inputs"][0]["data"][0] = first  # type: ignore[index]
    bodies = [v2_body(ROWS[i : i + 1]) for i in range(4)]
    bodies.insert(2, bad)
    threads = [threading.Thread(target=send, args=(i + 1, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in [holder, *threads]:
        t.join()
    assert results[0].status_code == 200
    assert results[3].status_code == status
    assert words in results[3].json()["error"]
    good = [results[i] for i in (1, 2, 4, 5)]
    assert [r.status_code for r in good] == [200] * 4
    got = np.concatenate([output(r.json(), "probabilities") for r in good])
    np.testing.assert_allclose(got, reference(ts_repo, ROWS), rtol=1e-5, atol=1e-6)
    # However often the batch was split to find the bad request, each request is counted once.
    after = httpx.get(ts_server.url + "/metrics").text
    assert _value(after, requests_200) - _value(before, requests_200) == 5
    assert _value(after, requests_bad) - _maybe(before, requests_bad) == 1
    assert _value(after, durations) - _value(before, durations) == 6


def _running(server: RunningServer) -> bool:
    scheduler = server.runtime.repository.models["tiny_ts"]["1"].scheduler
    return bool(getattr(scheduler, "_running", None))


def test_a_new_version_is_served_and_the_old_torchserve_stopped(
    ts_repo: Path, tmp_path: Path
) -> None:
    model = tmp_path / "tiny_ts"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.mar").symlink_to(ts_repo / "tiny_ts" / "1" / "model.mar")
    (model / "config.yaml").write_text((ts_repo / "tiny_ts" / "config.yaml").read_text())
    with run_server(model_repository=tmp_path, grpc_port=None) as srv:
        first = backend_of(srv).process
        old_root = first.root
        (model / "2").mkdir()
        (model / "2" / "model.mar").symlink_to(ts_repo / "tiny_ts" / "1" / "model.mar")
        srv.call(srv.runtime.repository.sync())
        index = httpx.get(srv.url + "/v2/repository/index").json()
        assert {i["version"]: i["state"] for i in index} == {"2": "READY"}
        answer = httpx.post(srv.url + "/v2/models/tiny_ts/infer", json=v2_body(ROWS), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "2"
        np.testing.assert_allclose(
            output(answer.json(), "probabilities"), reference(ts_repo, ROWS), atol=1e-6
        )
        assert output(answer.json(), "handler_batch").reshape(-1).tolist() == [4, 4, 4, 4]
        assert not old_root.exists()


def test_with_two_workers_a_batch_is_shared_between_them(ts_repo: Path, tmp_path: Path) -> None:
    model = tmp_path / "two"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.mar").symlink_to(ts_repo / "tiny_ts" / "1" / "model.mar")
    config = yaml.safe_load((ts_repo / "tiny_ts" / "config.yaml").read_text())
    config["torchserve"]["workers"] = 2
    config["warmup"] = {"runs": 0}
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    with run_server(models={"two": model}, grpc_port=None) as srv:
        before = _ts_requests(srv, "two")
        answer = httpx.post(srv.url + "/v2/models/two/infer", json=v2_body(ROWS), timeout=60)
        assert answer.status_code == 200, answer.text
        # Two TorchServe requests of two rows each, one per worker, answered in row order.
        assert _ts_requests(srv, "two") - before == 2
        assert output(answer.json(), "handler_batch").reshape(-1).tolist() == [2, 2, 2, 2]
        np.testing.assert_allclose(
            output(answer.json(), "probabilities"), reference(ts_repo, ROWS), atol=1e-6
        )


def test_the_runtime_handler_gives_the_mar_handler_its_context(tmp_path: Path) -> None:
    """In-process, with TorchServe's own Context: per-row request ids and headers while the
    model's handler runs, the batch size it was configured with, its per-row statuses, and
    the worker's context as it was afterwards."""
    ts_context = _ts_context_module()

    from modelpilot_runtime.backends.torchserve import handler as runtime_handler
    from modelpilot_runtime.backends.torchserve import wire

    (tmp_path / "seen_handler.py").write_text(
        "SEEN = []\n"
        "def handle(data, context):\n"
        "    if data is None:\n"
        "        SEEN.append(('batch_size', context.system_properties['batch_size']))\n"
        "        return None\n"
        "    answers = []\n"
        "    for i, request in enumerate(data):\n"
        "        SEEN.append((context.get_request_id(i),\n"
        "                     context.get_request_header(i, 'Content-Type')))\n"
        "        value = request['body']['inputs'][0]['data'][0]\n"
        "        if value < 0:\n"
        "            context.set_response_status(418, 'teapot', idx=i)\n"
        "            answers.append({'message': 'negative'})\n"
        "        else:\n"
        "            answers.append([value * 2])\n"
        "    return answers\n"
    )
    manifest = {"model": {"handler": "seen_handler.py"}}
    context = ts_context.Context("m", str(tmp_path), manifest, 1, None, "0.12.0")
    os.environ[runtime_handler.BATCH_SIZE_ENV] = "16"
    sys_path_before = list(sys.path)
    sys.path.insert(0, str(tmp_path))
    try:
        runtime_handler.handle(None, context)
        import seen_handler  # type: ignore[import-not-found]

        assert seen_handler.SEEN == [("batch_size", 16)]
        outer = [ts_context.RequestProcessor({"Content-Type": wire.CONTENT_TYPE})]
        context.request_ids, context.request_processor = {0: "req"}, outer
        specs = [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]

        def call(values: list[float]) -> tuple[dict[str, object], dict[str, np.ndarray]]:
            body = wire.encode(
                {"x": np.array(values, dtype=np.float32).reshape(-1, 1)},
                {"x": "FP32"},
                format="json",
                split=True,
                outputs=specs,
                want=["y"],
            )
            (answer,) = runtime_handler.handle([{"body": bytearray(body)}], context)
            return wire.decode(answer)

        header, tensors = call([1.0, 2.5, 4.0])
        assert header == {}
        assert tensors["y"].tolist() == [[2.0], [5.0], [8.0]]
        assert seen_handler.SEEN[1:] == [
            ("req-0", "application/json"),
            ("req-1", "application/json"),
            ("req-2", "application/json"),
        ]
        header, tensors = call([1.0, -1.0])
        assert header == {"error": {"status": 418, "message": "negative", "source": "handler"}}
        # The worker's own context is back as TorchServe set it.
        assert context.request_ids == {0: "req"}
        assert context.request_processor is outer
        assert context.get_response_content_type(0) == wire.CONTENT_TYPE
    finally:
        del os.environ[runtime_handler.BATCH_SIZE_ENV]
        sys.path[:] = sys_path_before
        sys.modules.pop("seen_handler", None)


def _ts_context_module() -> Any:
    """TorchServe's `ts/context.py`, loaded alone: importing the `ts` package leaves its
    version file open."""
    spec = importlib.util.find_spec("ts")
    assert spec is not None
    assert spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "context.py"
    module_spec = importlib.util.spec_from_file_location("ts_context_alone", path)
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _maybe(metrics: str, series: str) -> float:
    try:
        return _value(metrics, series)
    except AssertionError:
        return 0.0


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


def _value(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the metrics")
