"""tritonclient's HTTP client (binary tensor extension on by default) against the server."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient  # type: ignore[import-untyped]
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from tests.unit.runtime.conftest import RunningServer


@pytest.fixture
def triton(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.runtime.http_port}")
    yield client
    client.close()


def test_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("tiny")
    assert triton.get_model_metadata("tiny")["inputs"][0]["shape"] == [-1, 8]
    assert triton.get_model_config("tiny")["max_batch_size"] == 0  # no batching: any batch


@pytest.mark.parametrize("binary", [True, False])
def test_infer(triton: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.ones((2, 8), np.float32)
    inp = httpclient.InferInput("input", [2, 8], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    result = triton.infer("tiny", [inp], outputs=[out])
    probs = result.as_numpy("probabilities")
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_every_datatype_binary(triton: httpclient.InferenceServerClient) -> None:
    from tests.unit.runtime.test_http_v2 import ECHO

    inputs = []
    for dt, (arr, _) in ECHO.items():
        inp = httpclient.InferInput(f"in_{dt}", list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    result = triton.infer("echo", inputs)
    for dt, (arr, _) in ECHO.items():
        got = result.as_numpy(f"out_{dt}")
        if dt == "BYTES":
            assert got.ravel().tolist() == arr.ravel().tolist()
        else:
            np.testing.assert_array_equal(got, arr)


def test_error(triton: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("input", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as info:
        triton.infer("tiny", [inp])
    assert "does not match" in info.value.message()
