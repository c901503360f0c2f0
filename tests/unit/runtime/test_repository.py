"""The model repository: version policies, hot reload, failed loads, per-model config."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import httpx
import pytest

from modelpilot_runtime.config import (
    ConfigError,
    VersionPolicy,
    load_model_config,
    version_sort_key,
)
from modelpilot_runtime.samples import write_repository
from tests.unit.runtime.conftest import RunningServer, run_server, wait_until


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy(latest=1), ["10"]),
        (VersionPolicy(latest=2), ["2", "10"]),
        (VersionPolicy(all=True), ["1", "2", "10"]),
        (VersionPolicy(specific=["1", "7"]), ["1"]),
    ],
)
def test_version_policy(policy: VersionPolicy, expected: list[str]) -> None:
    assert policy.select(["10", "1", "2"]) == expected


def test_version_order_is_numeric_then_natural() -> None:
    assert sorted(["v10", "v2", "3", "12"], key=version_sort_key) == ["3", "12", "v2", "v10"]


def test_policy_takes_one_choice() -> None:
    with pytest.raises(ValueError, match="one of latest, specific, all"):
        VersionPolicy(latest=1, all=True)


def test_config_file_overrides_defaults(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "batching: {max_batch_size: 8}\nversion_policy: {all: true}\n"
    )
    config = load_model_config(
        tmp_path, {"batching": {"max_delay_ms": 3.0}, "version_policy": {"latest": 1}}
    )
    assert config.batching.max_batch_size == 8
    assert config.batching.max_delay_ms == 3.0
    assert config.version_policy.all


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("batching: {max_batch_size: 0}", "max_batch_size"),
        ("bogus: 1", "bogus"),
        ("[1", "cannot read"),
    ],
)
def test_bad_config_is_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_model_config(tmp_path, {})


def sync(server: RunningServer) -> None:
    server.call(server.runtime.repository.sync())


def status(server: RunningServer, model: str) -> dict[str, str]:
    index = httpx.get(server.url + "/v2/repository/index").json()
    return {i["version"]: i["state"] for i in index if i["name"] == model}


def add_version(root: Path, model: str, version: str) -> None:
    staging = root / f".{model}-{version}"
    write_repository(staging, [model], version=version)
    shutil.move(staging / model / version, root / model / version)
    shutil.rmtree(staging)


def test_hot_reload_adds_and_removes_versions(tmp_path: Path) -> None:
    root = write_repository(tmp_path / "repo", ["tiny"])
    (root / "tiny" / "config.yaml").write_text("version_policy: {latest: 2}\n")
    with run_server(model_repository=root) as srv:
        assert status(srv, "tiny") == {"1": "READY"}
        add_version(root, "tiny", "2")
        sync(srv)
        assert status(srv, "tiny") == {"1": "READY", "2": "READY"}
        # Without a version, the highest ready version answers.
        meta = httpx.get(srv.url + "/v2/models/tiny").json()
        assert meta["versions"] == ["1", "2"]
        body = {
            "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]
        }
        assert (
            httpx.post(srv.url + "/v2/models/tiny/infer", json=body).json()["model_version"] == "2"
        )
        add_version(root, "tiny", "3")
        sync(srv)  # latest 2: version 1 goes
        assert status(srv, "tiny") == {"2": "READY", "3": "READY"}
        assert (
            httpx.post(srv.url + "/v2/models/tiny/versions/1/infer", json=body).status_code == 404
        )
        shutil.rmtree(root / "tiny" / "3")
        sync(srv)  # the latest two on disk are 1 and 2 again
        assert status(srv, "tiny") == {"1": "READY", "2": "READY"}
        shutil.rmtree(root / "tiny")
        sync(srv)
        assert status(srv, "tiny") == {}
        assert httpx.get(srv.url + "/v2/models/tiny/ready").status_code == 404


def test_broken_version_is_reported_and_others_keep_serving(tmp_path: Path) -> None:
    root = write_repository(tmp_path / "repo", ["tiny"])
    (root / "tiny" / "config.yaml").write_text("version_policy: {all: true}\n")
    with run_server(model_repository=root) as srv:
        (root / "tiny" / "2").mkdir()
        (root / "tiny" / "2" / "model.onnx").write_bytes(b"this is not onnx")
        sync(srv)
        assert status(srv, "tiny") == {"1": "READY", "2": "FAILED"}
        index = httpx.get(srv.url + "/v2/repository/index").json()
        reason = next(i["reason"] for i in index if i["version"] == "2")
        assert "failed to load" in reason
        tfs = httpx.get(srv.url + "/v1/models/tiny/versions/2").json()["model_version_status"][0]
        assert tfs["state"] == "END"
        assert tfs["status"]["error_message"] == reason
        assert httpx.get(srv.url + "/v2/models/tiny/versions/2/ready").status_code == 503
        body = {
            "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]
        }
        assert (
            httpx.post(srv.url + "/v2/models/tiny/infer", json=body).json()["model_version"] == "1"
        )
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'modelpilot_model_ready{model="tiny",provider="",version="2"} 0.0' in metrics
        # Fixed on disk: loaded on the next scan.
        shutil.copy(root / "tiny" / "1" / "model.onnx", root / "tiny" / "2" / "model.onnx")
        sync(srv)
        assert status(srv, "tiny") == {"1": "READY", "2": "READY"}


def test_server_not_ready_while_a_model_has_no_version(tmp_path: Path) -> None:
    root = write_repository(tmp_path / "repo", ["tiny"])
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"nope")
    with run_server(model_repository=root) as srv:
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 503
        assert httpx.get(srv.url + "/v2/health/live").status_code == 200
        shutil.rmtree(root / "broken")
        sync(srv)
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 200


def test_polling_picks_up_a_new_version(tmp_path: Path) -> None:
    root = write_repository(tmp_path / "repo", ["tiny"])
    with run_server(model_repository=root, poll_interval=0.1) as srv:
        add_version(root, "tiny", "2")
        wait_until(lambda: status(srv, "tiny") == {"2": "READY"})


def test_in_flight_requests_finish_when_their_version_is_unloaded(tmp_path: Path) -> None:
    root = write_repository(tmp_path / "repo", ["tiny"])
    # Batched, and held in the server 300 ms each (the batcher runs a lone request at once).
    defaults = {
        "batching": {"max_batch_size": 4, "max_delay_ms": 300},
        "faults": {"added_latency_ms": 300},
    }
    with run_server(model_repository=root, model_defaults=defaults) as srv:
        body = {
            "inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]
        }

        async def request_then_remove() -> list[int]:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                jobs = [
                    asyncio.ensure_future(
                        client.post("/v2/models/tiny/versions/1/infer", json=body)
                    )
                    for _ in range(3)
                ]
                await asyncio.sleep(0.1)  # in flight: held 300 ms
                shutil.rmtree(root / "tiny" / "1")
                add_version(root, "tiny", "2")
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(srv.runtime.repository.sync(), srv.loop)
                )
                return [r.status_code for r in await asyncio.gather(*jobs)]

        assert asyncio.run(request_then_remove()) == [200, 200, 200]
        assert status(srv, "tiny") == {"2": "READY"}


def test_changed_config_reloads_the_model(tmp_path: Path) -> None:
    root = write_repository(tmp_path / "repo", ["tiny"])
    with run_server(model_repository=root) as srv:
        assert (
            httpx.get(srv.url + "/v2/models/tiny/config").json()["max_batch_size"] == 0
        )  # no batching
        config = root / "tiny" / "config.yaml"
        config.write_text("batching: {max_batch_size: 8}\n")
        os.utime(config, (1, 1))  # a stamp surely different from "no file"
        sync(srv)
        assert httpx.get(srv.url + "/v2/models/tiny/config").json()["max_batch_size"] == 8
        config.write_text("batching: {max_batch_size: 0}\n")
        os.utime(config, (2, 2))
        sync(srv)
        index = httpx.get(srv.url + "/v2/repository/index").json()
        assert any("max_batch_size" in i["reason"] for i in index)
        # The version that was serving keeps serving, and the pod stays ready.
        assert httpx.get(srv.url + "/v2/models/tiny/ready").status_code == 200
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 200


TINY_BODY = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}


def test_a_broken_new_version_leaves_the_old_one_serving(tmp_path: Path) -> None:
    root = write_repository(tmp_path / "repo", ["tiny"])  # default policy: latest 1
    with run_server(model_repository=root) as srv:
        # A half-copied (or corrupt) version 2 appears.
        (root / "tiny" / "2").mkdir()
        (root / "tiny" / "2" / "model.onnx").write_bytes(b"half a model")
        sync(srv)
        assert status(srv, "tiny") == {"1": "READY", "2": "FAILED"}
        answer = httpx.post(srv.url + "/v2/models/tiny/infer", json=TINY_BODY)
        assert answer.status_code == 200
        assert answer.json()["model_version"] == "1"
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 200
        # The copy completes: version 2 loads, and only then does version 1 go.
        shutil.copy(root / "tiny" / "1" / "model.onnx", root / "tiny" / "2" / "model.onnx")
        sync(srv)
        assert status(srv, "tiny") == {"2": "READY"}
        answer = httpx.post(srv.url + "/v2/models/tiny/infer", json=TINY_BODY)
        assert answer.json()["model_version"] == "2"


def test_a_model_file_changed_in_place_is_reloaded_safely(tmp_path: Path) -> None:
    from modelpilot_runtime.samples import dense_classifier

    root = write_repository(tmp_path / "repo", ["tiny"])
    model_file = root / "tiny" / "1" / "model.onnx"
    with run_server(model_repository=root) as srv:
        before = httpx.post(srv.url + "/v2/models/tiny/infer", json=TINY_BODY).json()
        # Overwritten in place with a broken file: the loaded copy keeps serving, and says so.
        model_file.write_bytes(b"not a model")
        sync(srv)
        assert status(srv, "tiny") == {"1": "READY"}
        index = httpx.get(srv.url + "/v2/repository/index").json()
        assert "failed to load" in index[0]["reason"]
        again = httpx.post(srv.url + "/v2/models/tiny/infer", json=TINY_BODY).json()
        assert again["outputs"] == before["outputs"]
        # Overwritten in place with another working model: loaded, and it answers.
        model_file.write_bytes(dense_classifier([8, 16, 3], seed=99, name="tiny"))
        sync(srv)
        assert status(srv, "tiny") == {"1": "READY"}
        assert httpx.get(srv.url + "/v2/repository/index").json()[0]["reason"] == ""
        after = httpx.post(srv.url + "/v2/models/tiny/infer", json=TINY_BODY).json()
        assert after["outputs"] != before["outputs"]


def test_versions_are_listed_in_version_order(tmp_path: Path) -> None:
    root = write_repository(tmp_path / "repo", ["tiny"], version="2")
    add_version(root, "tiny", "10")
    (root / "tiny" / "config.yaml").write_text("version_policy: {all: true}\n")
    with run_server(model_repository=root) as srv:
        meta = httpx.get(srv.url + "/v2/models/tiny").json()
        missing = httpx.get(srv.url + "/v2/models/tiny/versions/3").json()
    assert meta["versions"] == ["2", "10"]
    assert "it serves 2, 10" in missing["error"]
