"""The TorchServe path's binary format and the runtime handler's conversions (rows into the
requests a `.mar` handler expects, its answers into tensors), without TorchServe: none of
this imports torch or `ts`."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from modelpilot_runtime.backends.torchserve import wire
from modelpilot_runtime.backends.torchserve.handler import (
    AnswerError,
    message_text,
    outputs_of,
    requests_of,
    stack,
    stack_answers,
)
from modelpilot_runtime.tensors import TensorSpec

PROBS = TensorSpec("probabilities", "FP32", (-1, 3))
BATCH = TensorSpec("handler_batch", "INT64", (-1, 1))


def test_a_message_round_trips_every_datatype() -> None:
    tensors: dict[str, np.ndarray] = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f16": np.array([[1.5], [-2.0]], dtype=np.float16),
        "i64": np.array([[1], [2**40]], dtype=np.int64),
        "flag": np.array([True, False]),
        "text": np.array([b"a", "\u00e9".encode()], dtype=object),
        "none": np.zeros((0, 4), dtype=np.float32),
    }
    datatypes = {"f32": "FP32", "f16": "FP16", "i64": "INT64", "flag": "BOOL"}
    datatypes |= {"text": "BYTES", "none": "FP32"}
    payload = wire.encode(tensors, datatypes, format="json", split=True, want=["x"])
    header, decoded = wire.decode(payload)
    assert header == {"format": "json", "split": True, "want": ["x"]}
    assert list(decoded) == list(tensors)
    for name, arr in tensors.items():
        assert decoded[name].shape == arr.shape
        assert decoded[name].dtype == arr.dtype
        assert decoded[name].tolist() == arr.tolist()


def test_a_message_without_tensors_carries_its_fields() -> None:
    payload = wire.encode({}, {}, error={"status": 409, "message": "no"})
    assert wire.decode(payload) == ({"error": {"status": 409, "message": "no"}}, {})


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"MPT", "too short"),
        (b"JSON" + struct.pack("<I", 2) + b"{}", "not a modelpilot tensor message"),
        (b"MPT1" + struct.pack("<I", 99) + b"{}", "the header claims 99 bytes"),
        (b"MPT1" + struct.pack("<I", 2) + b"[]", "unreadable header"),
        (
            wire.encode({"x": np.zeros(2, np.float32)}, {"x": "FP32"})[:-1],
            "runs past the end",
        ),
        (wire.encode({"x": np.zeros(2, np.float32)}, {"x": "FP32"}) + b"!", "left over"),
    ],
)
def test_a_malformed_message_is_refused_with_a_reason(payload: bytes, words: str) -> None:
    with pytest.raises(wire.WireError, match=words):
        wire.decode(payload)


def test_rows_become_the_json_requests_torchserve_delivered_one_by_one() -> None:
    header = {"format": "json", "split": True}
    tensors = {
        "input": np.arange(6, dtype=np.float32).reshape(3, 2),
        "tag": np.array([[b"a"], [b"b"], [b"\xff"]], dtype=object),
    }
    requests = requests_of(header, tensors)
    assert requests == [
        {
            "body": {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [0.0, 1.0]},
                    {"name": "tag", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]},
                ]
            }
        },
        {
            "body": {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [2.0, 3.0]},
                    {"name": "tag", "datatype": "BYTES", "shape": [1, 1], "data": ["b"]},
                ]
            }
        },
        {
            "body": {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [4.0, 5.0]},
                    {"name": "tag", "datatype": "BYTES", "shape": [1, 1], "data": ["\ufffd"]},
                ]
            }
        },
    ]
    # Exactly what a JSON body of the same request decodes to in TorchServe's worker.
    assert json.loads(json.dumps(requests[0]["body"])) == requests[0]["body"]


def test_an_unbatchable_model_gets_the_whole_request_as_one() -> None:
    tensors = {"input": np.arange(4, dtype=np.int32).reshape(2, 2)}
    (request,) = requests_of({"format": "json", "split": False}, tensors)
    assert request["body"]["inputs"] == [
        {"name": "input", "datatype": "INT32", "shape": [2, 2], "data": [0, 1, 2, 3]}
    ]


def test_raw_rows_are_the_bytes_of_each_element() -> None:
    tensors = {"image": np.array([b"\x89PNG", b"GIF8"], dtype=object)}
    requests = requests_of({"format": "raw", "split": True}, tensors)
    assert requests == [{"body": bytearray(b"\x89PNG")}, {"body": bytearray(b"GIF8")}]
    assert all(isinstance(r["body"], bytearray) for r in requests)


def _answer(row: int) -> dict[str, object]:
    return {
        "outputs": [
            {"name": "probabilities", "shape": [1, 3], "data": [row, row + 0.5, row + 0.25]},
            {"name": "handler_batch", "shape": [1, 1], "data": [7]},
            {"name": "ignored", "data": "not declared"},
        ]
    }


def test_uniform_answers_stack_at_once_like_row_by_row() -> None:
    answers = [_answer(i) for i in range(4)]
    fast = stack_answers(answers, [None] * 4, [PROBS, BATCH], ["probabilities", "handler_batch"])
    slow = stack([outputs_of(a, None, [PROBS, BATCH]) for a in answers], list(fast))
    for name in fast:
        assert fast[name].dtype == slow[name].dtype
        np.testing.assert_array_equal(fast[name], slow[name])
    assert fast["probabilities"].shape == (4, 3)
    assert fast["handler_batch"].tolist() == [[7]] * 4


def test_mixed_answers_go_row_by_row() -> None:
    # A bare list, JSON text, JSON bytes and an "outputs" object for one declared output.
    answers: list[object] = [
        [[0.1, 0.2, 0.7]],
        json.dumps([[0.2, 0.2, 0.6]]),
        json.dumps({"outputs": [{"name": "probabilities", "data": [0.3, 0.3, 0.4]}]}).encode(),
        {"outputs": [{"name": "probabilities", "shape": [1, 3], "data": [0.5, 0.5, 0.0]}]},
    ]
    types: list[str | None] = [None, "text/plain", "application/json", None]
    out = stack_answers(answers, types, [PROBS], ["probabilities"])
    np.testing.assert_allclose(
        out["probabilities"],
        [[0.1, 0.2, 0.7], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]],
        rtol=1e-6,
    )


def test_bytes_that_are_not_json_are_the_one_bytes_output() -> None:
    label = TensorSpec("label", "BYTES", (-1,))
    assert outputs_of(b"\x00cat", "image/png", [label])["label"].tolist() == [b"\x00cat"]


@pytest.mark.parametrize(
    ("answer", "content_type", "words"),
    [
        ({"outputs": [{"name": "probabilities", "data": [1, 2, 3]}]}, None, "lacks output(s)"),
        ([1.0, 2.0], None, "answered a bare value but the config declares 2 outputs"),
        (b"\x00\x01", "application/octet-stream", "2 bytes of application/octet-stream"),
        (b"{oops", "application/json", "the handler's answer"),
        (
            {"outputs": [{"name": "probabilities"}, {"name": "handler_batch", "data": [1]}]},
            None,
            "has no data",
        ),
    ],
)
def test_answers_that_are_not_the_declared_outputs_say_why(
    answer: object, content_type: str | None, words: str
) -> None:
    with pytest.raises(AnswerError, match=words.replace("(", r"\(").replace(")", r"\)")):
        stack_answers([answer], [content_type], [PROBS, BATCH], ["probabilities"])


def test_rows_that_do_not_stack_are_an_error() -> None:
    answers = [
        {"outputs": [{"name": "probabilities", "shape": [1, 3], "data": [1, 2, 3]}]},
        {"outputs": [{"name": "probabilities", "shape": [1, 2], "data": [1, 2]}]},
    ]
    with pytest.raises(AnswerError, match="do not stack"):
        stack_answers(answers, [None, None], [PROBS], ["probabilities"])


def test_an_error_answer_becomes_a_message() -> None:
    assert message_text({"message": "too large", "code": 3}) == "too large"
    assert message_text(b"plain words") == "plain words"
    assert message_text("text") == "text"
    assert message_text({"detail": 1}) == '{"detail": 1}'
