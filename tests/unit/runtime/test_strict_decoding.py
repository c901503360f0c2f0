"""Strict decoding: every value must fit its datatype exactly, on every protocol; NaN and
infinite outputs come back as Triton writes them."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from modelpilot_runtime.server.proto import inference_pb2 as pb
from modelpilot_runtime.server.proto import inference_pb2_grpc as pb_grpc
from tests.unit.runtime.conftest import RunningServer


def echo_body(datatype: str, data: list[Any]) -> dict[str, Any]:
    """Every input the echo model takes, the one under test with `data`."""
    from tests.unit.runtime.test_http_v2 import ECHO

    inputs = []
    for dt, (arr, as_json) in ECHO.items():
        flat = (
            data
            if dt == datatype
            else [x for row in as_json for x in row]
            if as_json is not None
            else arr.ravel().tolist()
        )
        inputs.append({"name": f"in_{dt}", "datatype": dt, "shape": [1, len(flat)], "data": flat})
    return {"inputs": inputs}


def output(response: httpx.Response, name: str) -> Any:
    return next(o for o in response.json()["outputs"] if o["name"] == name)


@pytest.mark.parametrize(
    ("datatype", "data", "position", "why"),
    [
        ("INT64", [1, 1.9], 1, "is not an integer"),
        ("INT64", [1, "2"], 1, "is not a number"),
        ("INT64", [True, 2], 0, "is not a number"),
        ("INT64", [1, None], 1, "is not a number"),
        ("INT32", [1, 2**31], 1, "outside the range"),
        ("INT8", [-129], 0, "outside the range"),
        ("UINT8", [-1], 0, "outside the range"),
        ("UINT64", [0, -1], 1, "outside the range"),
        ("FP32", [1.0, 1e39], 1, "outside the range"),
        ("FP16", [70000.0], 0, "outside the range"),
        ("FP32", [1.0, False], 1, "is not a number"),
        ("FP64", ["1.5"], 0, "is not a number"),
        ("BOOL", [True, 1], 1, "is not true or false"),
        ("BOOL", [True, None], 1, "is not true or false"),
        ("BOOL", ["false"], 0, "is not true or false"),
        ("BYTES", ["a", 1], 1, "is not a string"),
    ],
)
def test_values_that_do_not_fit_exactly_are_400_naming_input_and_element(
    client: httpx.Client, datatype: str, data: list[Any], position: int, why: str
) -> None:
    response = client.post("/v2/models/echo/infer", json=echo_body(datatype, data))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert f"input 'in_{datatype}'" in error
    assert f"element {position}" in error
    assert why in error


def test_values_at_the_edges_of_their_types_pass_exactly(client: httpx.Client) -> None:
    cases: list[tuple[str, list[Any]]] = [
        ("INT64", [-(2**63), 2**63 - 1]),
        ("UINT64", [0, 2**64 - 1]),
        ("INT8", [-128, 127]),
        ("FP32", [1, -2, 3.5]),  # integers are exact in a float tensor
        ("BOOL", [True, False]),
    ]
    for datatype, data in cases:
        response = client.post("/v2/models/echo/infer", json=echo_body(datatype, data))
        assert response.status_code == 200, response.text
        assert output(response, f"out_{datatype}")["data"] == data


def test_non_finite_outputs_are_written_as_triton_does(client: httpx.Client) -> None:
    x = np.array([[1.5, np.nan, np.inf, -np.inf]], dtype=np.float32)
    body = echo_body("FP64", [0.0])
    (fp32,) = [i for i in body["inputs"] if i["name"] == "in_FP32"]
    del fp32["data"]
    fp32["shape"] = [1, 4]
    fp32["parameters"] = {"binary_data_size": 16}
    head = json.dumps(body).encode()
    response = client.post(
        "/v2/models/echo/infer",
        content=head + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 200, response.text
    assert b"[1.5,NaN,Infinity,-Infinity]" in response.content
    # Python's json (and so tritonclient) reads the tokens back.
    (out,) = [o for o in json.loads(response.content)["outputs"] if o["name"] == "out_FP32"]
    np.testing.assert_array_equal(np.array(out["data"], dtype=np.float32), x.ravel())


def test_tfserving_bool_strings_and_bad_base64_are_400(client: httpx.Client) -> None:
    cases = [
        ({"inputs": {"in_BOOL": [["false"]]}}, "in_BOOL", "is not true or false"),
        ({"inputs": {"in_BYTES": [[{"b64": "!!!"}]]}}, "in_BYTES", "not valid base64"),
        ({"inputs": {"in_BYTES": [[{"b64": 1}]]}}, "in_BYTES", "must be a string or"),
        ({"inputs": {"in_INT64": [[1.9]]}}, "in_INT64", "is not an integer"),
    ]
    for body, name, why in cases:
        # The echo model takes every input; a missing one would be the error otherwise: the
        # decoding error comes first.
        response = client.post("/v1/models/echo:predict", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert f"input {name!r}" in error
        assert why in error


def test_tfserving_bytes_outputs_keep_their_shape(client: httpx.Client) -> None:
    from tests.unit.runtime.test_http_v2 import ECHO

    inputs: dict[str, Any] = {}
    for dt, (arr, as_json) in ECHO.items():
        inputs[f"in_{dt}"] = (as_json if as_json is not None else arr.tolist()) * 2
    response = client.post("/v1/models/echo:predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert outputs["out_BYTES"] == [["a", "", "z\u00e9"], ["a", "", "z\u00e9"]]
    assert outputs["out_BOOL"] == [[True, False, True], [True, False, True]]


@pytest.fixture
def stub(server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def test_grpc_raw_and_typed_contents_together_are_refused(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input",
        datatype="FP32",
        shape=[1, 8],
        contents=pb.InferTensorContents(fp32_contents=[1.0] * 8),
    )
    request = pb.ModelInferRequest(
        model_name="tiny", inputs=[tensor], raw_input_contents=[struct.pack("<8f", *[2.0] * 8)]
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one or the other" in str(info.value.details())


def test_grpc_narrow_integers_out_of_range_are_refused(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    tensors = [
        pb.ModelInferRequest.InferInputTensor(
            name="in_INT8",
            datatype="INT8",
            shape=[1, 1],
            contents=pb.InferTensorContents(int_contents=[300]),
        ),
        pb.ModelInferRequest.InferInputTensor(
            name="in_UINT8",
            datatype="UINT8",
            shape=[1, 1],
            contents=pb.InferTensorContents(uint_contents=[256]),
        ),
    ]
    for tensor in tensors:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(pb.ModelInferRequest(model_name="echo", inputs=[tensor]), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "outside the range" in str(info.value.details())
