"""Open Inference Protocol v2 over HTTP: every endpoint, good and bad requests."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.unit.runtime.conftest import RunningServer, run_server

X = [[1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 1, 1, 1, 1]]


def tiny_body(data: list[list[int]] = X, **extra: object) -> dict[str, object]:
    flat = [v for row in data for v in row]
    return {
        "inputs": [{"name": "input", "shape": [len(data), 8], "datatype": "FP32", "data": flat}],
        **extra,
    }


def reference(sample_repo: Path, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(
        str(sample_repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return list(session.run(None, feeds))


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "modelpilot-runtime"
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("path", ["/v2/models/tiny", "/v2/models/tiny/versions/1"])
def test_model_metadata(client: httpx.Client, path: str) -> None:
    meta = client.get(path).json()
    assert meta["name"] == "tiny"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/tiny/ready", 200),
        ("/v2/models/tiny/versions/1/ready", 200),
        ("/v2/models/tiny/versions/9/ready", 404),
        ("/v2/models/nope/ready", 404),
        ("/v2/models/nope", 404),
        ("/v2/models/tiny/versions/9", 404),
    ],
)
def test_model_readiness(client: httpx.Client, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status
    if status != 200:
        assert response.json()["error"]


def test_model_config(client: httpx.Client) -> None:
    # No batching: max_batch_size 0 and the batch dimension in dims, as Triton reads it (any
    # batch is taken); max_batch_size 1 would tell clients to send one row at a time.
    config = client.get("/v2/models/tiny/config").json()
    assert config["max_batch_size"] == 0
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 8]}]


def test_model_config_with_batching(sample_repo: Path) -> None:
    defaults = {"batching": {"max_batch_size": 16}}
    with run_server(models={"tiny": sample_repo / "tiny"}, model_defaults=defaults) as srv:
        config = httpx.get(srv.url + "/v2/models/tiny/config").json()
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [8]}]


@pytest.mark.parametrize(
    "path", ["/v2/models/tiny/versions//infer", "/v1/models/tiny/versions/:predict"]
)
def test_an_empty_version_in_the_path_is_not_the_default_version(
    client: httpx.Client, path: str
) -> None:
    response = client.post(path, json=tiny_body())
    assert response.status_code == 404
    assert "empty version" in response.json()["error"]


def test_infer_json_matches_onnxruntime(client: httpx.Client, sample_repo: Path) -> None:
    response = client.post("/v2/models/tiny/infer", json=tiny_body(id="req-1"))
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"] == "req-1"
    assert doc["model_name"] == "tiny"
    assert doc["model_version"] == "1"
    (out,) = doc["outputs"]
    assert out["name"] == "probabilities"
    assert out["datatype"] == "FP32"
    assert out["shape"] == [2, 3]
    (expected,) = reference(sample_repo, "tiny", {"input": np.array(X, np.float32)})
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 3), expected, rtol=1e-6)


def test_infer_with_version_and_nested_data(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "input", "shape": [2, 8], "datatype": "FP32", "data": X}]}
    response = client.post("/v2/models/tiny/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [2, 3]


def test_named_outputs_and_several_inputs(client: httpx.Client, sample_repo: Path) -> None:
    a = [[1.0, 5.0, 2.0, 0.0]]
    body = {
        "inputs": [
            {"name": "a", "shape": [1, 4], "datatype": "FP32", "data": a},
            {"name": "b", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]},
            {"name": "flag", "shape": [1, 1], "datatype": "BOOL", "data": [False]},
        ],
        "outputs": [{"name": "argmax"}, {"name": "sum"}],
    }
    doc = client.post("/v2/models/multi/infer", json=body).json()
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert list(outputs) == ["argmax", "sum"]
    assert outputs["argmax"] == {"name": "argmax", "datatype": "INT64", "shape": [1], "data": [1]}
    assert outputs["sum"]["data"] == [2.0, 7.0, 5.0, 4.0]


def binary_request(
    inputs: list[tuple[str, str, list[int], bytes]], binary_output: bool
) -> tuple[bytes, str]:
    header = {
        "inputs": [
            {
                "name": n,
                "datatype": dt,
                "shape": shape,
                "parameters": {"binary_data_size": len(raw)},
            }
            for n, dt, shape, raw in inputs
        ],
        "parameters": {"binary_data_output": binary_output},
    }
    head = json.dumps(header).encode()
    return head + b"".join(raw for *_, raw in inputs), str(len(head))


def split_binary(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    n = int(response.headers["inference-header-content-length"])
    return json.loads(response.content[:n]), response.content[n:]


def test_binary_tensor_extension(client: httpx.Client, sample_repo: Path) -> None:
    x = np.array(X, np.float32)
    body, n = binary_request([("input", "FP32", [2, 8], x.tobytes())], binary_output=True)
    response = client.post(
        "/v2/models/tiny/infer", content=body, headers={"Inference-Header-Content-Length": n}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    head, raw = split_binary(response)
    (out,) = head["outputs"]
    assert out["parameters"]["binary_data_size"] == len(raw) == 2 * 3 * 4
    (expected,) = reference(sample_repo, "tiny", {"input": x})
    np.testing.assert_allclose(np.frombuffer(raw, np.float32).reshape(2, 3), expected, rtol=1e-6)


def bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


ECHO = {
    "BOOL": (np.array([[True, False, True]]), [[True, False, True]]),
    "UINT8": (np.array([[0, 7, 255]], np.uint8), None),
    "UINT16": (np.array([[0, 7, 65535]], np.uint16), None),
    "UINT32": (np.array([[0, 7, 2**32 - 1]], np.uint32), None),
    "UINT64": (np.array([[0, 7, 2**64 - 1]], np.uint64), None),
    "INT8": (np.array([[-128, 0, 127]], np.int8), None),
    "INT16": (np.array([[-32768, 0, 32767]], np.int16), None),
    "INT32": (np.array([[-(2**31), 0, 2**31 - 1]], np.int32), None),
    "INT64": (np.array([[-(2**63), 0, 2**63 - 1]], np.int64), None),
    "FP16": (np.array([[0.5, -1.25, 65504]], np.float16), None),
    "FP32": (np.array([[0.1, -1.5, 3e38]], np.float32), None),
    "FP64": (np.array([[0.1, -1.5, 1e308]], np.float64), None),
    "BYTES": (np.array([[b"a", b"", "z\u00e9".encode()]], dtype=object), [["a", "", "z\u00e9"]]),
}


def test_every_datatype_as_json(client: httpx.Client) -> None:
    inputs = []
    for dt, (arr, as_json) in ECHO.items():
        data = as_json if as_json is not None else arr.tolist()
        inputs.append({"name": f"in_{dt}", "datatype": dt, "shape": list(arr.shape), "data": data})
    response = client.post("/v2/models/echo/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    for dt, (arr, as_json) in ECHO.items():
        out = outputs[f"out_{dt}"]
        assert out["datatype"] == dt
        assert out["shape"] == [1, 3]
        expected = np.ravel(as_json).tolist() if as_json is not None else arr.ravel().tolist()
        if dt in ("FP32", "FP16"):
            np.testing.assert_allclose(out["data"], arr.astype(np.float64).ravel(), rtol=1e-3)
        else:
            assert out["data"] == expected, dt


def test_every_datatype_as_binary(client: httpx.Client) -> None:
    inputs = []
    for dt, (arr, _) in ECHO.items():
        raw = bytes_elements(list(arr.ravel())) if dt == "BYTES" else arr.tobytes()
        inputs.append((f"in_{dt}", dt, list(arr.shape), raw))
    body, n = binary_request(inputs, binary_output=True)
    response = client.post(
        "/v2/models/echo/infer", content=body, headers={"Inference-Header-Content-Length": n}
    )
    assert response.status_code == 200, response.text
    head, raw = split_binary(response)
    offset = 0
    for out in head["outputs"]:
        size = out["parameters"]["binary_data_size"]
        chunk = raw[offset : offset + size]
        offset += size
        dt = out["name"][len("out_") :]
        arr = ECHO[dt][0]
        if dt == "BYTES":
            assert chunk == bytes_elements(list(arr.ravel()))
        else:
            assert chunk == arr.tobytes(), dt
    assert offset == len(raw)


def body_with(drop: str = "", copies: int = 1, **fields: object) -> bytes:
    """A tiny infer body with one input whose fields are replaced (or one dropped)."""
    item: dict[str, object] = {
        "name": "input",
        "shape": [1, 8],
        "datatype": "FP32",
        "data": [0] * 8,
    }
    item.update(fields)
    item.pop(drop, None)
    return json.dumps({"inputs": [item] * copies}).encode()


BAD_REQUESTS = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"{}", "'inputs' must be a non-empty list"),
    (body_with(name="x"), "unknown input(s) 'x'"),
    (body_with(datatype="FP64"), "datatype FP64 does not match the model's FP32"),
    (body_with(shape=[1, 7], data=[0] * 7), "shape [1, 7] does not match"),
    (body_with(shape=[8]), "has 1 dimensions, the model expects 2"),
    (body_with(data=[0] * 5), "has 5 elements, shape [1, 8] needs 8"),
    (body_with(datatype="FP99"), "unsupported datatype 'FP99'"),
    (body_with(data=["a"] * 8), 'element 0 ("a") is not a number'),
    (body_with(shape=[1, -8]), "non-negative integers"),
    (body_with(drop="data"), "needs 'data' or parameters.binary_data_size"),
    (body_with(copies=2), "is given twice"),
    (body_with(parameters={"binary_data_size": 32}), "without Inference-Header-Content-Length"),
    (body_with(shape=[0, 8], data=[]), "the batch is empty"),
    (body_with(shape=[10**12, 8]), "shape [1000000000000, 8] needs 8000000000000"),
    (
        json.dumps({**json.loads(body_with()), "outputs": [{"name": "nope"}]}).encode(),
        "unknown output 'nope'",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_REQUESTS)
def test_bad_requests_get_400_naming_the_problem(
    client: httpx.Client, body: bytes, message: str
) -> None:
    response = client.post("/v2/models/tiny/infer", content=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_multi_input_missing_one(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]}
    response = client.post("/v2/models/multi/infer", json=body)
    assert response.status_code == 400
    assert "missing input(s) 'b', 'flag'" in response.json()["error"]


@pytest.mark.parametrize(
    ("header", "claimed", "sent", "message"),
    [
        ("abc", 32, 32, "is not a number"),
        ("100000", 32, 32, "outside the"),
        (None, 32, 31, "runs past the 31 bytes of binary data"),
        (None, 31, 31, "got 31 bytes of data, shape [1, 8] needs 32"),
    ],
)
def test_bad_binary_requests(
    client: httpx.Client, header: str | None, claimed: int, sent: int, message: str
) -> None:
    params = {"binary_data_size": claimed}
    inputs = [{"name": "input", "shape": [1, 8], "datatype": "FP32", "parameters": params}]
    head = json.dumps({"inputs": inputs}).encode()
    response = client.post(
        "/v2/models/tiny/infer",
        content=head + b"\x00" * sent,
        headers={"Inference-Header-Content-Length": header or str(len(head))},
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_huge_claimed_bytes_shape_is_refused_before_allocating(client: httpx.Client) -> None:
    params = {"binary_data_size": 8}
    inputs = [
        {"name": "in_BYTES", "shape": [10**9, 10**9], "datatype": "BYTES", "parameters": params}
    ]
    head = json.dumps({"inputs": inputs}).encode()
    response = client.post(
        "/v2/models/echo/infer",
        content=head + b"\x00" * 8,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 400
    assert "cannot hold" in response.json()["error"]


def test_unclaimed_binary_data(client: httpx.Client) -> None:
    body, n = binary_request([("input", "FP32", [1, 8], b"\x00" * 32)], binary_output=False)
    response = client.post(
        "/v2/models/tiny/infer",
        content=body + b"junk",
        headers={"Inference-Header-Content-Length": n},
    )
    assert response.status_code == 400
    assert "not claimed by any input" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v2/models/nope/infer", 404),
        ("POST", "/v2/models/tiny/versions/7/infer", 404),
        ("GET", "/v2/models/tiny/infer", 405),
        ("POST", "/v2/health/ready", 405),
        ("GET", "/nowhere", 404),
        ("GET", "/v2/models/tiny/whatever", 404),
    ],
)
def test_routing_errors(client: httpx.Client, method: str, path: str, status: int) -> None:
    response = client.request(method, path, content=json.dumps(tiny_body()))
    assert response.status_code == status
    assert response.json()["error"]


def raw_http(server: RunningServer, payload: bytes, read_until_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", server.runtime.http_port), timeout=10) as s:
        s.sendall(payload)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if not read_until_close:
                break
        return b"".join(chunks)


def test_malformed_http_is_a_400(server: RunningServer) -> None:
    answer = raw_http(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"malformed HTTP request" in answer


def test_oversize_body_refused_from_the_headers(sample_repo: Path) -> None:

    with run_server(model_repository=sample_repo, max_body_bytes=1000) as srv:
        # Only the headers are sent: the answer comes before any of the body.
        answer = raw_http(
            srv,
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 413")
        assert b"over the limit of 1000 bytes" in answer
        # The same with a chunked body that grows past the limit.
        chunk = b"400\r\n" + b"x" * 0x400 + b"\r\n"
        answer = raw_http(
            srv,
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk,
        )
        assert answer.startswith(b"HTTP/1.1 413")
        # A client that sends the whole oversize body still reads the answer, not a reset.
        with httpx.Client(base_url=srv.url) as c:
            response = c.post("/v2/models/tiny/infer", content=b"x" * 200_000)
        assert response.status_code == 413
        # And the server still serves.
        with httpx.Client(base_url=srv.url) as c:
            assert c.post("/v2/models/tiny/infer", json=tiny_body()).status_code == 200


def test_expect_continue_and_pipelining(server: RunningServer) -> None:
    body = json.dumps(tiny_body()).encode()
    request = (
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    closing = request.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
    answer = raw_http(server, request + request + closing)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    with_expect = request.replace(
        b"Host: x\r\n", b"Host: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
    )
    answer = raw_http(server, with_expect)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")


def test_repository_index(client: httpx.Client) -> None:
    index = client.get("/v2/repository/index").json()
    assert {"name": "tiny", "version": "1", "state": "READY", "reason": ""} in index


def test_chunked_request_body(server: RunningServer) -> None:
    body = json.dumps(tiny_body()).encode()
    half = len(body) // 2
    chunks = (
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
        + b"0\r\n\r\n"
    )
    answer = raw_http(
        server,
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunks,
    )
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b'"shape":[2,3]' in answer


def test_http10_closes_after_the_answer(server: RunningServer) -> None:
    answer = raw_http(server, b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in answer
