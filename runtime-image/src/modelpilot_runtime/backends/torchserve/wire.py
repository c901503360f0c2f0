"""The binary format between the runtime and its handler in TorchServe's Python worker.

One TorchServe request carries a whole runtime batch (or one worker's share of it), and one
answer carries all of its outputs:

    b"MPT1" | header length (uint32, little-endian) | header (JSON) | tensor data

The header lists the tensors in the order of their data, each as `{"name", "datatype",
"shape", "size"}` (`size` in bytes), next to whatever else the message says: a request says
how the model's own handler takes its rows (`format`, `split`) and which outputs the config
declares; an answer holds either the outputs or an `error` (`{"status", "message"}`).
Numeric tensors are raw little-endian bytes in C order; BYTES tensors use the v2 binary
layout (each element a uint32 length, then its bytes). Nothing here imports torch or
TorchServe, so the runtime and the worker share it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from modelpilot_runtime.errors import BadRequestError
from modelpilot_runtime.tensors import V2_TO_NUMPY, Array, array_to_raw, raw_to_array

MAGIC = b"MPT1"
CONTENT_TYPE = "application/x-modelpilot-tensors"
_PREFIX = struct.Struct("<4sI")


class WireError(ValueError):
    """A message that does not follow the format (a bug on one side, never a client's)."""


def encode(tensors: Mapping[str, Array], datatypes: Mapping[str, str], **fields: Any) -> bytes:
    """A message holding `tensors` (as the v2 `datatypes` given by name) and `fields`."""
    blobs = []
    described = []
    for name, arr in tensors.items():
        datatype = datatypes[name]
        if datatype == "BYTES":
            blob = array_to_raw(np.asarray(arr, dtype=object))
        else:
            blob = array_to_raw(np.asarray(arr, dtype=V2_TO_NUMPY[datatype]))
        blobs.append(blob)
        described.append(
            {"name": name, "datatype": datatype, "shape": list(arr.shape), "size": len(blob)}
        )
    header = orjson.dumps({**fields, "tensors": described})
    return b"".join([_PREFIX.pack(MAGIC, len(header)), header, *blobs])


def decode(payload: bytes | bytearray | memoryview) -> tuple[dict[str, Any], dict[str, Array]]:
    """The header fields (less `tensors`) and the tensors of a message, by name, in order.

    Numeric arrays are views over `payload` (read-only when it is `bytes`)."""
    view = memoryview(payload)
    if len(view) < _PREFIX.size:
        raise WireError(f"a message of {len(view)} bytes is too short")
    magic, length = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise WireError(f"not a modelpilot tensor message (starts with {bytes(magic)!r})")
    start = _PREFIX.size + length
    if start > len(view):
        raise WireError(f"the header claims {length} bytes, the message has {len(view)}")
    try:
        header = orjson.loads(view[_PREFIX.size : start])
    except orjson.JSONDecodeError as exc:
        raise WireError(f"unreadable header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise WireError("unreadable header: not an object with a list of tensors")
    described = header.pop("tensors")
    tensors: dict[str, Array] = {}
    pos = start
    try:
        for item in described:
            name, datatype, size = item["name"], item["datatype"], item["size"]
            end = pos + size
            if end > len(view):
                raise WireError(f"tensor {name!r} runs past the end of the message")
            tensors[name] = raw_to_array(
                view[pos:end], V2_TO_NUMPY[datatype], tuple(item["shape"]), f"tensor {name!r}"
            )
            pos = end
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, BadRequestError) as exc:
        raise WireError(f"malformed tensor description: {exc}") from None
    if pos != len(view):
        raise WireError(f"{len(view) - pos} bytes left over after the tensors")
    return header, tensors
