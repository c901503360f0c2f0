"""Property-based fuzzing of the request paths: whatever a client sends (JSON of any shape,
the binary extension with any lengths, TF-Serving bodies, raw bytes, gRPC messages), the
answer is 2xx or 4xx, never a 5xx, and never a hang (every call has a timeout).

Bounded example counts keep the suite to seconds; run with more examples locally with
`--hypothesis-seed` / HYPOTHESIS settings when changing a decoder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpilot_runtime.samples import write_repository
from modelpilot_runtime.server.proto import inference_pb2 as pb
from modelpilot_runtime.server.proto import inference_pb2_grpc as pb_grpc
from modelpilot_runtime.tensors import V2_TO_NUMPY
from tests.unit.runtime.conftest import RunningServer, run_server

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MODELS = ["tiny", "multi", "echo", "lookup"]
INPUT_NAMES = ["input", "a", "b", "flag", "ids", "in_FP32", "in_INT64", "in_BYTES", "in_BOOL"]
DATATYPES = [*V2_TO_NUMPY, "FP99", ""]

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=16,
)
numbers = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
)
shapes = st.one_of(
    st.lists(st.just(1), min_size=30, max_size=70),  # more dimensions than numpy allows
    st.lists(
        st.one_of(st.integers(min_value=-2, max_value=9), st.sampled_from([2**31, 2**62])),
        max_size=5,
    ),
    json_values,
)
datas = st.one_of(
    st.lists(numbers, max_size=40),
    st.lists(st.lists(numbers, min_size=1, max_size=8), max_size=5),
    st.lists(st.text(max_size=4), max_size=8),
    json_values,
)
parameters = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "binary_data_size": st.integers(min_value=-4, max_value=2**40) | json_values,
            "binary_data": json_values,
            "binary_data_output": json_values,
        },
    ),
    json_values,
)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(INPUT_NAMES) | st.text(max_size=3),
        "datatype": st.sampled_from(DATATYPES) | json_values,
        "shape": shapes,
    },
    optional={"data": datas, "parameters": parameters},
)
bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["probabilities", "sum", "out_FP32", "vectors", "x"])},
                optional={"parameters": parameters},
            ),
            max_size=3,
        )
        | json_values,
        "id": json_values,
        "parameters": parameters,
    },
)


@pytest.fixture(scope="module", params=["direct", "batched"])
def fuzz_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    repo = write_repository(tmp_path_factory.mktemp("fuzz"), MODELS)
    defaults: dict[str, Any] = {}
    if request.param == "batched":
        defaults = {"batching": {"max_batch_size": 4, "max_delay_ms": 1}}
    with run_server(model_repository=repo, model_defaults=defaults) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(fuzz_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.url, timeout=10) as client:
        yield client


def assert_not_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


@FUZZ
@given(model=st.sampled_from(MODELS), body=bodies)
def test_v2_json_requests_never_5xx(http: httpx.Client, model: str, body: Any) -> None:
    # The standard library writes integers beyond 64 bits, which orjson would refuse.
    content = json.dumps(body).encode()
    assert_not_5xx(http.post(f"/v2/models/{model}/infer", content=content))


@FUZZ
@given(
    model=st.sampled_from(MODELS),
    body=bodies,
    binary=st.binary(max_size=96),
    header=st.one_of(
        st.none(),
        st.integers(min_value=-3, max_value=400).map(str),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=4),
    ),
)
def test_v2_binary_requests_never_5xx(
    http: httpx.Client, model: str, body: Any, binary: bytes, header: str | None
) -> None:
    head = json.dumps(body).encode()
    length = str(len(head)) if header is None else header
    response = http.post(
        f"/v2/models/{model}/infer",
        content=head + binary,
        headers={"Inference-Header-Content-Length": length},
    )
    assert_not_5xx(response)


@FUZZ
@given(
    model=st.sampled_from(MODELS),
    key=st.sampled_from(["instances", "inputs"]),
    value=st.one_of(json_values, st.lists(st.lists(numbers, max_size=8), max_size=3)),
)
def test_tfserving_requests_never_5xx(http: httpx.Client, model: str, key: str, value: Any) -> None:
    content = json.dumps({key: value}).encode()
    assert_not_5xx(http.post(f"/v1/models/{model}:predict", content=content))


@FUZZ
@given(
    path=st.sampled_from(
        ["/v2/models/tiny/infer", "/v2/models/echo/versions/1/infer", "/v1/models/multi:predict"]
    ),
    content=st.binary(max_size=256),
)
def test_raw_bytes_never_5xx(http: httpx.Client, path: str, content: bytes) -> None:
    assert_not_5xx(http.post(path, content=content))


@pytest.fixture(scope="module")
def grpc_stub(fuzz_server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(fuzz_server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


int32s = st.lists(st.integers(min_value=-(2**31), max_value=2**31 - 1), max_size=12)
contents = st.one_of(
    st.builds(pb.InferTensorContents),
    st.builds(pb.InferTensorContents, int_contents=int32s),
    st.builds(
        pb.InferTensorContents, uint_contents=st.lists(st.integers(0, 2**32 - 1), max_size=12)
    ),
    st.builds(
        pb.InferTensorContents,
        int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12),
    ),
    st.builds(pb.InferTensorContents, fp32_contents=st.lists(st.floats(width=32), max_size=12)),
    st.builds(pb.InferTensorContents, bool_contents=st.lists(st.booleans(), max_size=12)),
    st.builds(pb.InferTensorContents, bytes_contents=st.lists(st.binary(max_size=6), max_size=6)),
    st.builds(
        pb.InferTensorContents,
        fp32_contents=st.lists(st.floats(width=32), max_size=4),
        int_contents=int32s,
    ),
)
grpc_tensors = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=st.sampled_from(INPUT_NAMES),
    datatype=st.sampled_from(DATATYPES),
    shape=st.lists(st.integers(min_value=-2, max_value=2**62), max_size=4),
    contents=contents,
)
grpc_requests = st.builds(
    pb.ModelInferRequest,
    model_name=st.sampled_from([*MODELS, "nope"]),
    model_version=st.sampled_from(["", "1", "2"]),
    inputs=st.lists(grpc_tensors, max_size=3),
    raw_input_contents=st.lists(st.binary(max_size=64), max_size=3),
)

NOT_5XX = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@FUZZ
@given(request=grpc_requests)
def test_grpc_requests_never_5xx(
    grpc_stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest
) -> None:
    future = grpc_stub.ModelInfer.future(request, timeout=10)
    assert future.code() in NOT_5XX, (future.code(), future.details())


def test_fuzzed_servers_counted_no_5xx(http: httpx.Client, fuzz_server: RunningServer) -> None:
    """After the fuzz tests above (same module server): not one 5xx in the metrics either."""
    metrics = http.get("/metrics").text
    assert not [
        line
        for line in metrics.splitlines()
        if line.startswith("modelpilot_inference_requests_total") and 'code="5' in line
    ]
