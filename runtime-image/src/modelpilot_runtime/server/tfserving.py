"""TF-Serving REST: `POST /v1/models/{m}[/versions/{v}]:predict` with the row format
(`instances`) or the columnar format (`inputs`), answered as `predictions` or `outputs`.

Values are read as TF Serving's JSON mapping says: numbers for numeric types (integers only
for integer types, exact and in range), true/false for BOOL, a UTF-8 string or
{"b64": "..."} for BYTES; anything else is a 400 naming the input and the element. BYTES
outputs keep their shape; those whose name ends in `_bytes` are written as {"b64": ...}, as
TF Serving does. NaN and infinite float outputs are written as the tokens NaN, Infinity and
-Infinity (TF Serving's own choice too; not strict JSON).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson

from modelpilot_runtime.errors import BadRequestError
from modelpilot_runtime.server.v2 import has_non_finite, non_finite_json, with_raw_json
from modelpilot_runtime.tensors import (
    Array,
    TensorSpec,
    element_count,
    json_default,
    json_to_array,
    may_hold_bools,
)


def _cast(value: Any, spec: TensorSpec, where: str, maybe_bools: bool) -> Array:
    """One input's values as TF Serving's JSON mapping reads them: numbers for numeric types
    (integers only for integer types, exact, in range), true/false for BOOL, and for BYTES a
    UTF-8 string or a {"b64": "..."} object of valid base64; a 400 names what does not fit."""
    if not isinstance(value, list):
        value = [value]  # a scalar input in the columnar format
    if spec.datatype != "BYTES":
        arr = json_to_array(value, spec.datatype, where, maybe_bools)
        return arr.reshape(_nested_shape(value, arr.size, where))
    try:
        arr = np.array(value, dtype=object)
    except ValueError as exc:
        raise BadRequestError(f"{where}: values are not a regular nested list: {exc}") from None
    flat = arr.reshape(-1)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            flat[i] = item.encode()
        elif isinstance(item, dict) and item.keys() == {"b64"} and isinstance(item["b64"], str):
            try:
                flat[i] = base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise BadRequestError(f"{where}: element {i} is not valid base64") from None
        else:
            raise BadRequestError(
                f'{where}: element {i} must be a string or {{"b64": "..."}} for a BYTES input'
            )
    return arr


def _nested_shape(value: list[Any], size: int, where: str) -> tuple[int, ...]:
    """The shape of a regular nested list (numpy already refused ragged ones)."""
    shape: list[int] = []
    level: Any = value
    while isinstance(level, list):
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    if element_count(shape) != size:
        raise BadRequestError(f"{where}: values are not a regular nested list")
    return tuple(shape)


def decode(body: bytes, specs: list[TensorSpec]) -> tuple[dict[str, Array], bool]:
    """The inputs of a predict request and whether it used the row format."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequestError("request body must be a JSON object")
    maybe_bools = may_hold_bools(body)
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances == has_inputs:
        raise BadRequestError(
            "the request needs exactly one of 'instances' (row format) or 'inputs' (columnar)"
        )
    by_name = {s.name: s for s in specs}
    if has_instances:
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise BadRequestError("'instances' must be a non-empty list")
        if len(specs) == 1 and not isinstance(rows[0], dict):
            spec = specs[0]
            return {spec.name: _cast(rows, spec, f"input {spec.name!r}", maybe_bools)}, True
        columns: dict[str, list[Any]] = {name: [] for name in by_name}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise BadRequestError(
                    f"instances[{i}] must be an object naming each of {', '.join(by_name)}"
                )
            if row.keys() != by_name.keys():
                raise BadRequestError(
                    f"instances[{i}] has keys {sorted(row)}, the model takes {sorted(by_name)}"
                )
            for name in by_name:
                columns[name].append(row[name])
        return {
            n: _cast(v, by_name[n], f"input {n!r}", maybe_bools) for n, v in columns.items()
        }, True
    given = doc["inputs"]
    if isinstance(given, dict):
        unknown = [n for n in given if n not in by_name]
        if unknown:
            raise BadRequestError(
                f"unknown input(s) {', '.join(map(repr, unknown))}; "
                f"the model takes {', '.join(by_name)}"
            )
        return {
            n: _cast(v, by_name[n], f"input {n!r}", maybe_bools) for n, v in given.items()
        }, False
    if len(specs) != 1:
        raise BadRequestError(f"'inputs' must be an object naming each of {', '.join(by_name)}")
    return {specs[0].name: _cast(given, specs[0], f"input {specs[0].name!r}", maybe_bools)}, False


class _Encoder:
    """Plain JSON values for outputs; non-finite float outputs become placeholders whose raw
    JSON text (with NaN/Infinity tokens) replaces them after serialisation."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact  # look for NaN/inf (see `encode`)
        self.raw: dict[str, bytes] = {}

    def plain(self, arr: Array, name: str) -> Any:
        if arr.dtype.kind in "OSU":
            items: list[Any]
            if name.endswith("_bytes"):
                items = [
                    {
                        "b64": base64.b64encode(
                            x if isinstance(x, bytes) else str(x).encode()
                        ).decode()
                    }
                    for x in arr.ravel()
                ]
            else:
                items = [
                    x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                    for x in arr.ravel()
                ]
            if arr.ndim == 0:
                return items[0]
            nested = np.empty(len(items), dtype=object)
            nested[:] = items
            return nested.reshape(arr.shape).tolist()  # the tensor's shape, like other outputs
        if self.exact and has_non_finite(arr):
            placeholder = f"\x00non-finite {len(self.raw)}\x00"
            self.raw[placeholder] = non_finite_json(arr, nested=True)
            return placeholder
        if arr.dtype == np.float16:
            return arr.astype(np.float32)
        return arr


def encode(results: dict[str, Array], rows_format: bool) -> bytes:
    out = _encode(results, rows_format, False)
    # NaN and infinities come out of orjson as null, the only way a float array holds one:
    # only then are the outputs looked at for them.
    return _encode(results, rows_format, True) if b"null" in out else out


def _encode(results: dict[str, Array], rows_format: bool, exact: bool) -> bytes:
    enc = _Encoder(exact)
    if rows_format:
        if len(results) == 1:
            ((name, arr),) = results.items()
            doc: dict[str, Any] = {"predictions": enc.plain(arr, name)}
        else:
            n = min(a.shape[0] if a.ndim else 1 for a in results.values())
            doc = {
                "predictions": [
                    {
                        k: enc.plain(v[i], k) if v.ndim else enc.plain(v, k)
                        for k, v in results.items()
                    }
                    for i in range(n)
                ]
            }
    elif len(results) == 1:
        ((name, arr),) = results.items()
        doc = {"outputs": enc.plain(arr, name)}
    else:
        doc = {"outputs": {k: enc.plain(v, k) for k, v in results.items()}}
    out = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY, default=json_default)
    return with_raw_json(out, enc.raw) if enc.raw else out
