"""Tensor descriptions and the mapping between v2 datatypes, numpy dtypes and ONNX types.

Everything that turns request bytes into arrays (HTTP JSON, binary extension, gRPC, TF-Serving)
agrees on these tables, so a datatype means the same on every protocol.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelpilot_runtime.errors import BadRequestError

Array = npt.NDArray[Any]

# Little-endian on the wire, as the binary extension and gRPC raw contents specify.
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2: dict[np.dtype[Any], str] = {v: k for k, v in V2_TO_NUMPY.items()}
NUMPY_TO_V2[np.dtype(np.str_)] = "BYTES"
NUMPY_TO_V2[np.dtype(np.bytes_)] = "BYTES"

ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output: name, v2 datatype and shape (-1 for a dimension of any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        return V2_TO_NUMPY[self.datatype]

    def as_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def v2_dtype(datatype: object, where: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype name, or a 400 that names the bad one."""
    if not isinstance(datatype, str):
        raise BadRequestError(
            f"{where}: 'datatype' must be a string, got {type(datatype).__name__}"
        )
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise BadRequestError(
            f"{where}: unsupported datatype {datatype!r}; expected one of {', '.join(V2_TO_NUMPY)}"
        ) from None


# numpy 1.x arrays have at most 32 dimensions (numpy 2: 64); more is a client mistake, a 400,
# not an error from numpy's reshape.
MAX_DIMS = 32


def check_shape(shape: object, where: str) -> tuple[int, ...]:
    """A validated shape tuple: a list of non-negative integers."""
    if not isinstance(shape, (list, tuple)):
        raise BadRequestError(f"{where}: 'shape' must be a list of integers")
    if len(shape) > MAX_DIMS:
        raise BadRequestError(
            f"{where}: 'shape' has {len(shape)} dimensions, at most {MAX_DIMS} are supported"
        )
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise BadRequestError(
                f"{where}: 'shape' must be a list of non-negative integers, got {shape}"
            )
    return tuple(shape)


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def decode_bytes_tensor(buf: bytes | memoryview, count: int, where: str) -> Array:
    """BYTES in the binary layout: each element a 4-byte little-endian length, then the bytes."""
    if 4 * count > len(buf):
        # Checked before allocating: a huge claimed shape must not become a huge array.
        raise BadRequestError(f"{where}: {len(buf)} bytes cannot hold {count} BYTES elements")
    out = np.empty(count, dtype=object)
    view = memoryview(buf)
    pos, end = 0, len(view)
    for i in range(count):
        if pos + 4 > end:
            raise BadRequestError(f"{where}: binary BYTES data ends after {i} of {count} elements")
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + n > end:
            raise BadRequestError(
                f"{where}: binary BYTES element {i} runs past the end of the data"
            )
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != end:
        raise BadRequestError(f"{where}: {end - pos} bytes left over after {count} BYTES elements")
    return out


def encode_bytes_tensor(arr: Array) -> bytes:
    parts: list[bytes] = []
    for item in arr.ravel():
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def raw_to_array(
    buf: bytes | memoryview, dtype: np.dtype[Any], shape: tuple[int, ...], where: str
) -> Array:
    """An array over raw little-endian bytes (no copy), checking the size first."""
    count = element_count(shape)
    if dtype.kind == "O":
        return decode_bytes_tensor(buf, count, where).reshape(shape)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise BadRequestError(
            f"{where}: got {len(buf)} bytes of data, shape {list(shape)} needs {expected}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def array_to_raw(arr: Array) -> bytes:
    if arr.dtype.kind in "OUS":
        return encode_bytes_tensor(arr)
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def v2_datatype_of(arr: Array) -> str:
    kind = arr.dtype.kind
    if kind in "OUS":
        return "BYTES"
    return NUMPY_TO_V2.get(
        arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype, "BYTES"
    )


def json_default(obj: Any) -> Any:
    """orjson's fallback for what OPT_SERIALIZE_NUMPY leaves out (numpy.longlong, float16,
    non-contiguous arrays)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


# -- strict JSON decoding -------------------------------------------------------------------


def _flat_items(data: Any) -> Any:
    """The leaves of nested lists, in row-major order (the slow path: error messages only)."""
    stack = [iter([data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _allowed(item: Any, kind: str, dtype: np.dtype[Any]) -> str | None:
    """Why one JSON value does not fit a numeric or BOOL datatype exactly, or None."""
    if kind == "b":
        return None if type(item) is bool else "is not true or false"
    if type(item) is bool or not isinstance(item, (int, float)):
        return "is not a number"
    if kind in "iu":
        if type(item) is not int:
            return "is not an integer"
        info = np.iinfo(dtype)
        if not info.min <= item <= info.max:
            return f"is outside the range {info.min}..{info.max}"
        return None
    finfo = np.finfo(dtype)
    if not abs(item) <= float(finfo.max):
        return f"is outside the range of {dtype.name} (±{float(finfo.max):.6g})"
    return None


def _checked_slowly(data: Any, dtype: np.dtype[Any], datatype: str, where: str) -> Array:
    """Every element checked in Python: the first misfit is a 400 naming it; when all fit
    (e.g. UINT64 values that numpy's own inference turned into float64), the exact array."""
    items = list(_flat_items(data))
    for i, item in enumerate(items):
        why = _allowed(item, dtype.kind, dtype)
        if why is not None:
            shown = orjson.dumps(item).decode()[:40] if _jsonable(item) else repr(item)[:40]
            raise BadRequestError(
                f"{where}: element {i} ({shown}) {why}; {datatype} takes exact values only"
            )
    return np.array(items, dtype=dtype)


def _jsonable(item: Any) -> bool:
    try:
        orjson.dumps(item)
    except TypeError:
        return False
    return True


def json_to_array(data: Any, datatype: str, where: str, maybe_bools: bool = True) -> Array:
    """A flat-or-nested JSON list as an array of `datatype`, strictly: every value must fit
    exactly (no truncation of 1.9 to 1, no numeric strings, no true/null as numbers, no
    overflow to inf or wrap-around); a 400 names the input and the element otherwise.

    `maybe_bools` False promises that the document holds no JSON true/false at all (the
    caller looked at the bytes): numpy folds True into number arrays silently, and finding
    one otherwise takes a pass in Python.
    """
    dtype = V2_TO_NUMPY[datatype]
    if not isinstance(data, list):
        raise BadRequestError(f"{where}: 'data' must be a list")
    if dtype.kind == "O":
        try:
            arr = np.array(data, dtype=object)
        except ValueError as exc:
            raise BadRequestError(f"{where}: 'data' is not a regular nested list: {exc}") from None
        flat = arr.reshape(-1)
        for i, item in enumerate(flat):
            if isinstance(item, str):
                flat[i] = item.encode()
            else:
                raise BadRequestError(
                    f"{where}: element {i} is not a string; BYTES data must be strings"
                )
        return flat
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequestError(f"{where}: 'data' is not a regular nested list: {exc}") from None
    if arr.size == 0:
        return np.empty(0, dtype=dtype)
    kind = dtype.kind
    got = arr.dtype.kind
    if kind == "b":
        return arr.reshape(-1) if got == "b" else _checked_slowly(data, dtype, datatype, where)
    if got not in ("iu" if kind in "iu" else "iuf"):
        return _checked_slowly(data, dtype, datatype, where)
    if maybe_bools and any(type(x) is bool for x in _flat_items(data)):
        return _checked_slowly(data, dtype, datatype, where)
    flat = arr.reshape(-1) if arr.ndim != 1 else arr
    if datatype == "INT64" and got == "i":
        return flat  # numpy chose int64: every value fits
    if datatype == "FP64":
        return flat.astype(dtype, copy=False)  # orjson reads no NaN or infinity
    # For narrower types, the range first: a float beyond it would become inf in the cast,
    # an integer wrap around.
    values = data if arr.ndim == 1 else flat.tolist() if flat.size <= _SMALL else None
    if values is not None:
        low, high = min(values), max(values)
    else:
        low, high = flat.min(), flat.max()
    lowest, highest = _LIMITS[dtype]
    if low < lowest or high > highest:
        return _checked_slowly(data, dtype, datatype, where)
    return flat.astype(dtype)


# Looked up once: np.iinfo and np.finfo cost more per call than a small request's decoding.
_LIMITS: dict[np.dtype[Any], tuple[Any, Any]] = {
    **{
        d: (int(np.iinfo(d).min), int(np.iinfo(d).max))
        for d in V2_TO_NUMPY.values()
        if d.kind in "iu"
    },
    **{
        d: (-float(np.finfo(d).max), float(np.finfo(d).max))
        for d in V2_TO_NUMPY.values()
        if d.kind == "f"
    },
}
# Below this many elements, Python's min/max over a list beat numpy's reductions (about
# 1.5 µs each in numpy 2, more than the rest of decoding a small request); a flat JSON list
# is used as it is.
_SMALL = 64


def may_hold_bools(text: bytes | memoryview) -> bool:
    """Whether a JSON text may hold true/false tokens (False: it certainly holds none)."""
    raw = bytes(text) if isinstance(text, memoryview) else text
    return b"true" in raw or b"false" in raw
