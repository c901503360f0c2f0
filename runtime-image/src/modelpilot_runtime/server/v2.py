"""Open Inference Protocol v2 over HTTP: turning request bodies into arrays and outputs into
answers, JSON and the binary tensor data extension (`Inference-Header-Content-Length`).

Every malformed piece raises `BadRequestError` with a message naming the input and the problem.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from modelpilot_runtime.errors import BadRequestError
from modelpilot_runtime.tensors import (
    Array,
    array_to_raw,
    check_shape,
    element_count,
    json_default,
    json_to_array,
    may_hold_bools,
    raw_to_array,
    v2_datatype_of,
    v2_dtype,
)


class InferRequest:
    __slots__ = ("binary_all", "binary_outputs", "id", "inputs", "outputs")

    def __init__(self) -> None:
        self.id: str | None = None
        self.inputs: dict[str, Array] = {}
        self.outputs: list[str] | None = None
        self.binary_outputs: set[str] = set()
        self.binary_all = False


def _json_array(
    data: Any, datatype: str, shape: tuple[int, ...], where: str, maybe_bools: bool
) -> Array:
    arr = json_to_array(data, datatype, where, maybe_bools)
    count = element_count(shape)
    if arr.size != count:
        raise BadRequestError(
            f"{where}: 'data' has {arr.size} elements, shape {list(shape)} needs {count}"
        )
    return arr.reshape(shape)


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequestError(f"{where}: 'parameters' must be an object")
    return params


def _flag(params: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if type(value) is not bool:
        raise BadRequestError(f"{where}: parameters.{key} must be true or false")
    return value


def decode(body: bytes, header_length: bytes | None) -> InferRequest:
    """Parse an infer request body; the binary part follows the JSON header when
    `header_length` (the Inference-Header-Content-Length value) is given."""
    binary: memoryview | None = None
    if header_length is not None:
        if not header_length.isdigit() or len(header_length) > 18:
            raise BadRequestError(
                f"Inference-Header-Content-Length {header_length[:40]!r} is not a number"
            )
        n = int(header_length)
        if not 0 <= n <= len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length {n} is outside the {len(body)} byte body"
            )
        binary = memoryview(body)[n:]
        head: bytes | memoryview = memoryview(body)[:n]
    else:
        head = body
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequestError("request body must be a JSON object")
    maybe_bools = may_hold_bools(head)
    req = InferRequest()
    rid = doc.get("id")
    if rid is not None:
        if not isinstance(rid, str):
            raise BadRequestError("'id' must be a string")
        req.id = rid
    params = _params(doc, "request")
    req.binary_all = _flag(params, "binary_data_output", False, "request")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError("'inputs' must be a non-empty list")
    offset = 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise BadRequestError(f"inputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise BadRequestError(f"inputs[{i}]: 'name' must be a string")
        where = f"input {name!r}"
        if name in req.inputs:
            raise BadRequestError(f"{where} is given twice")
        dtype = v2_dtype(item.get("datatype"), where)
        shape = check_shape(item.get("shape"), where)
        in_params = _params(item, where)
        size = in_params.get("binary_data_size")
        if size is not None:
            if binary is None:
                raise BadRequestError(
                    f"{where}: binary_data_size given without Inference-Header-Content-Length"
                )
            if type(size) is not int or size < 0:
                raise BadRequestError(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise BadRequestError(
                    f"{where}: binary_data_size {size} at offset {offset} runs past the "
                    f"{len(binary)} bytes of binary data"
                )
            req.inputs[name] = raw_to_array(binary[offset : offset + size], dtype, shape, where)
            offset += size
        else:
            if "data" not in item:
                raise BadRequestError(f"{where}: needs 'data' or parameters.binary_data_size")
            req.inputs[name] = _json_array(
                item["data"], item["datatype"], shape, where, maybe_bools
            )
    if binary is not None and offset != len(binary):
        raise BadRequestError(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequestError("'outputs' must be a list")
        names: list[str] = []
        for i, item in enumerate(outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise BadRequestError(f"outputs[{i}] must be an object with a string 'name'")
            names.append(item["name"])
            out_params = _params(item, f"output {item['name']!r}")
            if _flag(out_params, "binary_data", req.binary_all, f"output {item['name']!r}"):
                req.binary_outputs.add(item["name"])
        req.outputs = names or None
    return req


def _json_data(arr: Array) -> Any:
    if arr.dtype.kind in "OSU":
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel()
        ]
    if arr.dtype == np.float16:
        return arr.ravel().astype(np.float32)
    return arr.ravel()


def non_finite_json(arr: Array, nested: bool = False) -> bytes:
    """A float array holding NaN or infinities as a JSON list (flat, or `nested` as its
    shape), with the tokens NaN, Infinity and -Infinity as Triton and TF Serving write them
    (not strict JSON; Python's json, and so tritonclient, reads them back). orjson alone
    would write null, which reads back as no value at all."""
    values = arr.astype(np.float32) if arr.dtype == np.float16 else arr

    def one(x: Any) -> bytes:
        if np.isfinite(x):
            return orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY)
        return b"NaN" if np.isnan(x) else b"Infinity" if x > 0 else b"-Infinity"

    def level(a: Array) -> bytes:
        if a.ndim == 0:
            return one(a[()])
        if a.ndim == 1 or not nested:
            return b"[" + b",".join(one(x) for x in a.ravel()) + b"]"
        return b"[" + b",".join(level(sub) for sub in a) + b"]"

    return level(values)


def has_non_finite(arr: Array) -> bool:
    return arr.dtype.kind == "f" and not bool(np.isfinite(arr).all())


def with_raw_json(head: bytes, raw: dict[str, bytes]) -> bytes:
    """`head` with each placeholder string in `raw` replaced by its raw JSON text."""
    for placeholder, text in raw.items():
        head = head.replace(orjson.dumps(placeholder), text, 1)
    return head


def encode(
    model: str, version: str, req: InferRequest, results: dict[str, Array]
) -> tuple[bytes, int | None]:
    """The answer body and, when any output is binary, the JSON header's length."""
    body, header_length = _encode(model, version, req, results, False)
    # orjson writes NaN and infinities as null, and a float array has no other way to hold a
    # null: only then are the outputs looked at for them (a null elsewhere, e.g. in the id,
    # costs one more pass that changes nothing).
    if b"null" in (body if header_length is None else body[:header_length]):
        return _encode(model, version, req, results, True)
    return body, header_length


def _encode(
    model: str, version: str, req: InferRequest, results: dict[str, Array], exact: bool
) -> tuple[bytes, int | None]:
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    raw_json: dict[str, bytes] = {}
    for name, arr in results.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype_of(arr),
            "shape": list(arr.shape),
        }
        if req.binary_all or name in req.binary_outputs:
            raw = array_to_raw(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif exact and has_non_finite(arr):
            placeholder = f"\x00non-finite {len(raw_json)}\x00"
            raw_json[placeholder] = non_finite_json(arr)
            entry["data"] = placeholder
        else:
            entry["data"] = _json_data(arr)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if req.id is not None:
        doc["id"] = req.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY, default=json_default)
    if raw_json:
        head = with_raw_json(head, raw_json)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)
