"""Open Inference Protocol v2 over gRPC, spoken by tritonclient (a real v2 client) and by
our own stubs for the typed `contents` path that tritonclient does not use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from modelpilot_runtime.server.proto import inference_pb2 as pb
from modelpilot_runtime.server.proto import inference_pb2_grpc as pb_grpc
from tests.unit.runtime.conftest import RunningServer


@pytest.fixture
def triton(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


def test_health_and_metadata(triton: grpcclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("tiny")
    assert triton.is_model_ready("tiny", "1")
    meta = triton.get_server_metadata()
    assert meta.name == "modelpilot-runtime"
    model = triton.get_model_metadata("tiny")
    assert model.versions == ["1"]
    assert [(i.name, i.datatype, list(i.shape)) for i in model.inputs] == [
        ("input", "FP32", [-1, 8])
    ]


def test_infer_tiny(triton: grpcclient.InferenceServerClient, sample_repo: Path) -> None:
    x = np.random.default_rng(0).random((4, 8), dtype=np.float32)
    inp = grpcclient.InferInput("input", [4, 8], "FP32")
    inp.set_data_from_numpy(x)
    result = triton.infer("tiny", [inp], request_id="r1")
    session = ort.InferenceSession(
        str(sample_repo / "tiny/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), session.run(None, {"input": x})[0], rtol=1e-6
    )
    assert result.get_response().id == "r1"


def test_every_datatype(triton: grpcclient.InferenceServerClient) -> None:
    from tests.unit.runtime.test_http_v2 import ECHO

    inputs = []
    for dt, (arr, _) in ECHO.items():
        inp = grpcclient.InferInput(f"in_{dt}", list(arr.shape), dt)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = triton.infer("echo", inputs)
    for dt, (arr, _) in ECHO.items():
        got = result.as_numpy(f"out_{dt}")
        assert got is not None
        assert got.shape == arr.shape
        if dt == "BYTES":
            assert got.ravel().tolist() == arr.ravel().tolist()
        else:
            np.testing.assert_array_equal(got, arr)


def test_named_outputs(triton: grpcclient.InferenceServerClient) -> None:
    a = grpcclient.InferInput("a", [1, 4], "FP32")
    a.set_data_from_numpy(np.array([[1, 5, 2, 0]], np.float32))
    b = grpcclient.InferInput("b", [1, 4], "INT64")
    b.set_data_from_numpy(np.ones((1, 4), np.int64))
    flag = grpcclient.InferInput("flag", [1, 1], "BOOL")
    flag.set_data_from_numpy(np.array([[True]]))
    result = triton.infer("multi", [a, b, flag], outputs=[grpcclient.InferRequestedOutput("half")])
    assert result.as_numpy("half").dtype == np.float16
    assert result.as_numpy("sum") is None


@pytest.mark.parametrize(
    ("model", "shape", "datatype", "code", "message"),
    [
        ("tiny", [1, 7], "FP32", "StatusCode.INVALID_ARGUMENT", "does not match"),
        ("tiny", [1, 8], "FP64", "StatusCode.INVALID_ARGUMENT", "datatype FP64"),
        ("nope", [1, 8], "FP32", "StatusCode.NOT_FOUND", "unknown model"),
    ],
)
def test_errors(
    triton: grpcclient.InferenceServerClient,
    model: str,
    shape: list[int],
    datatype: str,
    code: str,
    message: str,
) -> None:
    inp = grpcclient.InferInput("input", shape, datatype)
    inp.set_data_from_numpy(np.zeros(shape, np.float64 if datatype == "FP64" else np.float32))
    with pytest.raises(InferenceServerException) as info:
        triton.infer(model, [inp])
    assert info.value.status() == code
    assert message in info.value.message()


@pytest.fixture
def stub(server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def test_typed_contents(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input",
        datatype="FP32",
        shape=[1, 8],
        contents=pb.InferTensorContents(fp32_contents=[1.0] * 8),
    )
    response = stub.ModelInfer(pb.ModelInferRequest(model_name="tiny", inputs=[tensor]))
    (out,) = response.outputs
    assert out.name == "probabilities"
    assert list(out.shape) == [1, 3]
    assert np.frombuffer(response.raw_output_contents[0], np.float32).sum() == pytest.approx(
        1.0, rel=1e-5
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.ModelInferRequest(model_name="tiny"), "no inputs"),
        (
            pb.ModelInferRequest(
                model_name="tiny",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="input", datatype="FP32", shape=[1, 8]
                    )
                ],
                raw_input_contents=[b"\x00" * 32, b"\x00"],
            ),
            "2 raw_input_contents for 1 inputs",
        ),
        (
            pb.ModelInferRequest(
                model_name="tiny",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="input",
                        datatype="FP32",
                        shape=[1, 8],
                        contents=pb.InferTensorContents(fp32_contents=[1.0]),
                    )
                ],
            ),
            "has 1 elements",
        ),
    ],
)
def test_malformed_grpc_requests(
    stub: pb_grpc.GRPCInferenceServiceStub, request_: pb.ModelInferRequest, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_model_ready_unknown(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelReady(pb.ModelReadyRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
