"""The ONNX backend: execution providers, settings, int8 quantisation cache, warm-up;
and the generated sample models and gRPC modules."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from modelpilot_runtime.backends.onnx import OnnxBackend, resolve_providers
from modelpilot_runtime.config import ModelConfig
from modelpilot_runtime.samples import IR_VERSION, write_repository
from modelpilot_runtime.server.proto import regen


def config(**onnx_settings: object) -> ModelConfig:
    return ModelConfig.model_validate({"onnx": onnx_settings})


def test_provider_order_and_fallback(caplog: pytest.LogCaptureFixture) -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["tensorrt", "cuda", "cpu"], available) == available
    with caplog.at_level(logging.WARNING):
        assert resolve_providers(["openvino", "cuda"], available) == [
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
    assert "OpenVINOExecutionProvider is not in this onnxruntime build" in caplog.text


def test_cuda_requested_on_a_cpu_machine_runs_on_cpu_and_says_so(
    sample_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = OnnxBackend(
        sample_repo / "tiny" / "1", config(execution_providers=["cuda", "cpu"]), tmp_path
    )
    with caplog.at_level(logging.WARNING):
        info = backend.load()
    assert info.provider == "CPUExecutionProvider"
    if "CUDAExecutionProvider" in info.details["providers"]:  # a machine with a GPU
        pytest.skip("a GPU is present")
    assert "running on CPUExecutionProvider" in caplog.text


def test_settings_and_metadata(sample_repo: Path, tmp_path: Path) -> None:
    backend = OnnxBackend(
        sample_repo / "multi" / "1",
        config(intra_op_threads=1, inter_op_threads=1, graph_optimization="basic"),
        tmp_path,
    )
    info = backend.load()
    assert [(s.name, s.datatype, s.shape) for s in info.inputs] == [
        ("a", "FP32", (-1, 4)),
        ("b", "INT64", (-1, 4)),
        ("flag", "BOOL", (-1, 1)),
    ]
    assert info.batchable
    assert backend.session is not None
    assert backend.session.get_session_options().intra_op_num_threads == 1
    backend.warmup(2, [1, 4])
    assert info.warmup_seconds > 0
    assert info.batch1_seconds > 0


def test_synthetic_warmup_inputs_follow_the_metadata(sample_repo: Path, tmp_path: Path) -> None:
    backend = OnnxBackend(sample_repo / "echo" / "1", config(), tmp_path)
    backend.load()
    feeds = backend.synthetic_inputs(3)
    assert feeds["in_BOOL"].dtype == np.bool_
    assert feeds["in_UINT16"].dtype == np.uint16
    assert feeds["in_FP16"].shape == (3, 1)
    backend.warmup(1, [3])


def test_int8_quantisation_is_cached_beside_the_model(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo", ["mlp"])
    version = repo / "mlp" / "1"
    backend = OnnxBackend(version, config(quantize="dynamic_int8"), tmp_path / "cache")
    backend.load()
    cached = sorted(p.name for p in version.glob("model.int8-*.onnx"))
    assert len(cached) == 1
    assert backend.info.details["model_file"] == cached[0]
    stamp = (version / cached[0]).stat().st_mtime_ns
    # Loaded again: the cached file is used, not made anew.
    again = OnnxBackend(version, config(quantize="dynamic_int8"), tmp_path / "cache")
    again.load()
    assert (version / cached[0]).stat().st_mtime_ns == stamp
    x = np.random.default_rng(0).random((2, 784), dtype=np.float32)
    plain = OnnxBackend(version, config(), tmp_path / "cache")
    plain.load()
    quantised = again.predict({"input": x}, None)["probabilities"]
    reference = plain.predict({"input": x}, None)["probabilities"]
    np.testing.assert_allclose(quantised, reference, atol=0.05)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_model_directory_uses_the_cache_dir(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo", ["tiny"])
    version = repo / "tiny" / "1"
    version.chmod(0o555)
    try:
        backend = OnnxBackend(version, config(quantize="dynamic_int8"), tmp_path / "cache")
        backend.load()
    finally:
        version.chmod(0o755)
    assert list((tmp_path / "cache").glob("model.int8-*.onnx"))


def test_read_only_model_directory_uses_the_cache_dir_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = write_repository(tmp_path / "repo", ["tiny"])
    version = repo / "tiny" / "1"
    real_mkstemp = __import__("tempfile").mkstemp

    def mkstemp(*args: object, dir: str | Path, **kwargs: object) -> tuple[int, str]:  # noqa: A002
        if Path(dir) == version:
            raise PermissionError("read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr("modelpilot_runtime.backends.onnx.tempfile.mkstemp", mkstemp)
    backend = OnnxBackend(version, config(quantize="dynamic_int8"), tmp_path / "cache")
    backend.load()
    assert list((tmp_path / "cache").glob("model.int8-*.onnx"))
    assert not list(version.glob("model.int8-*.onnx"))


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        OnnxBackend(tmp_path, config(), tmp_path).load()


def test_sample_models_are_readable_by_this_onnxruntime(sample_repo: Path) -> None:
    for path in sample_repo.glob("*/1/model.onnx"):
        model = onnx.load(str(path))
        assert model.ir_version == IR_VERSION <= 13


def test_generated_grpc_modules_match_the_proto() -> None:
    assert regen.main(["--check"]) == 0
