"""TF-Serving REST: predict in both formats, model status, metadata, and errors."""

from __future__ import annotations

import httpx
import pytest


def test_predict_instances(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/tiny:predict", json={"instances": [[1, 2, 3, 4, 5, 6, 7, 8]] * 3}
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    assert all(len(p) == 3 for p in predictions)
    assert predictions[0] == predictions[2]


def test_predict_columnar_with_version(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/tiny/versions/1:predict", json={"inputs": [[1, 2, 3, 4, 5, 6, 7, 8]]}
    )
    assert response.status_code == 200, response.text
    (row,) = response.json()["outputs"]
    assert sum(row) == pytest.approx(1.0, rel=1e-5)


def test_predict_several_inputs_and_outputs(client: httpx.Client) -> None:
    instances = [
        {"a": [1, 5, 2, 0], "b": [1, 1, 1, 1], "flag": [True]},
        {"a": [9, 0, 0, 0], "b": [0] * 4, "flag": [False]},
    ]
    response = client.post("/v1/models/multi:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert first["argmax"] == 1
    assert first["sum"] == [2, 6, 3, 1]
    assert second["masked"] == [0, 0, 0, 0]
    columnar = {"inputs": {"a": [[1, 2, 3, 4]], "b": [[0, 0, 0, 1]], "flag": [[True]]}}
    outputs = client.post("/v1/models/multi:predict", json=columnar).json()["outputs"]
    assert outputs["sum"] == [[1, 2, 3, 5]]
    assert outputs["argmax"] == [3]


def test_model_status_and_metadata(client: httpx.Client) -> None:
    status = client.get("/v1/models/tiny").json()
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert client.get("/v1/models/tiny/versions/1").status_code == 200
    assert client.get("/v1/models/tiny/versions/2").status_code == 404
    meta = client.get("/v1/models/tiny/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["input"]["dtype"] == "FP32"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/tiny:predict", b"nope", 400, "not valid JSON"),
        ("/v1/models/tiny:predict", b"{}", 400, "exactly one of 'instances'"),
        ("/v1/models/tiny:predict", b'{"instances": []}', 400, "non-empty list"),
        ("/v1/models/tiny:predict", b'{"instances": [[1, 2]]}', 400, "shape [1, 2] does not match"),
        (
            "/v1/models/tiny:predict",
            b'{"instances": [["a", 1, 1, 1, 1, 1, 1, 1]]}',
            400,
            'element 0 ("a") is not a number',
        ),
        (
            "/v1/models/multi:predict",
            b'{"instances": [{"a": [1, 1, 1, 1]}]}',
            400,
            "the model takes",
        ),
        ("/v1/models/multi:predict", b'{"inputs": {"zz": 1}}', 400, "unknown input(s) 'zz'"),
        ("/v1/models/nope:predict", b'{"instances": [[1]]}', 404, "unknown model"),
        ("/v1/models/tiny:classify", b'{"instances": [[1]]}', 404, ":predict"),
    ],
)
def test_predict_errors(
    client: httpx.Client, path: str, body: bytes, status: int, message: str
) -> None:
    response = client.post(path, content=body)
    assert response.status_code == status
    assert message in response.json()["error"]
