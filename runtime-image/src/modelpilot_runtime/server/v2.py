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


def _json_array(data: Any, dtype: np.dtype[Any], shape: tuple[int, ...], where: str) -> Array:
    if not isinstance(data, list):
        raise BadRequestError(f"{where}: 'data' must be a list")
    try:
        if dtype.kind == "O":
            arr = np.array(data, dtype=object)
            flat = arr.ravel()
            for i, item in enumerate(flat):
                if isinstance(item, str):
                    flat[i] = item.encode()
                elif not isinstance(item, bytes):
                    raise BadRequestError(f"{where}: BYTES data must be strings")
        elif dtype.kind == "b":
            arr = np.array(data)
            if arr.size and arr.dtype != np.bool_:
                raise BadRequestError(f"{where}: BOOL data must be true or false")
            arr = arr.astype(np.bool_, copy=False)
        else:
            arr = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequestError(
            f"{where}: 'data' does not fit datatype {dtype.name}: {exc}"
        ) from None
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


def decode(body: bytes, header_length: bytes | None) -> InferRequest:
    """Parse an infer request body; the binary part follows the JSON header when
    `header_length` (the Inference-Header-Content-Length value) is given."""
    binary: memoryview | None = None
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequestError(
                f"Inference-Header-Content-Length {header_length!r} is not a number"
            ) from None
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
    req = InferRequest()
    rid = doc.get("id")
    if rid is not None:
        if not isinstance(rid, str):
            raise BadRequestError("'id' must be a string")
        req.id = rid
    params = _params(doc, "request")
    req.binary_all = bool(params.get("binary_data_output", False))
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
            req.inputs[name] = _json_array(item["data"], dtype, shape, where)
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
            if out_params.get("binary_data", req.binary_all):
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


def encode(
    model: str, version: str, req: InferRequest, results: dict[str, Array]
) -> tuple[bytes, int | None]:
    """The answer body and, when any output is binary, the JSON header's length."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
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
        else:
            entry["data"] = _json_data(arr)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if req.id is not None:
        doc["id"] = req.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY, default=json_default)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)
