"""TF-Serving REST: `POST /v1/models/{m}[/versions/{v}]:predict` with the row format
(`instances`) or the columnar format (`inputs`), answered as `predictions` or `outputs`.

Values are cast to the model's input types, as TF Serving does; a value that does not fit
is a 400 naming the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from modelpilot_runtime.errors import BadRequestError
from modelpilot_runtime.tensors import Array, TensorSpec, json_default


def _cast(value: Any, spec: TensorSpec, where: str) -> Array:
    try:
        if spec.datatype == "BYTES":
            arr = np.array(value, dtype=object)
            flat = arr.ravel()
            for i, item in enumerate(flat):
                if isinstance(item, dict) and "b64" in item:
                    import base64

                    flat[i] = base64.b64decode(item["b64"])
                elif isinstance(item, str):
                    flat[i] = item.encode()
            return arr
        return np.array(value, dtype=spec.dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequestError(
            f"{where}: values do not fit the model's {spec.datatype} input: {exc}"
        ) from None


def decode(body: bytes, specs: list[TensorSpec]) -> tuple[dict[str, Array], bool]:
    """The inputs of a predict request and whether it used the row format."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequestError("request body must be a JSON object")
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
            return {spec.name: _cast(rows, spec, f"input {spec.name!r}")}, True
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
        return {n: _cast(v, by_name[n], f"input {n!r}") for n, v in columns.items()}, True
    given = doc["inputs"]
    if isinstance(given, dict):
        unknown = [n for n in given if n not in by_name]
        if unknown:
            raise BadRequestError(
                f"unknown input(s) {', '.join(map(repr, unknown))}; "
                f"the model takes {', '.join(by_name)}"
            )
        return {n: _cast(v, by_name[n], f"input {n!r}") for n, v in given.items()}, False
    if len(specs) != 1:
        raise BadRequestError(f"'inputs' must be an object naming each of {', '.join(by_name)}")
    return {specs[0].name: _cast(given, specs[0], f"input {specs[0].name!r}")}, False


def _plain(arr: Array) -> Any:
    if arr.dtype.kind in "OSU":
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel()
        ]
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    return arr


def encode(results: dict[str, Array], rows_format: bool) -> bytes:
    if rows_format:
        if len(results) == 1:
            (arr,) = results.values()
            doc: dict[str, Any] = {"predictions": _plain(arr)}
        else:
            n = min(a.shape[0] if a.ndim else 1 for a in results.values())
            doc = {
                "predictions": [
                    {k: _plain(v[i]) if v.ndim else _plain(v) for k, v in results.items()}
                    for i in range(n)
                ]
            }
    elif len(results) == 1:
        (arr,) = results.values()
        doc = {"outputs": _plain(arr)}
    else:
        doc = {"outputs": {k: _plain(v) for k, v in results.items()}}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY, default=json_default)
