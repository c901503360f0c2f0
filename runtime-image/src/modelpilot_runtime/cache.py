"""The optional result cache: a bounded LRU from a hash of (model version, inputs, requested
outputs) to the outputs. Off unless `cache.max_entries` is set; only for deterministic models."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from modelpilot_runtime.tensors import Array

Outputs = dict[str, Array]


def request_key(version_id: str, inputs: dict[str, Array], outputs: list[str] | None) -> bytes:
    h = hashlib.blake2b(version_id.encode(), digest_size=20)
    for name, arr in inputs.items():
        h.update(name.encode())
        h.update(arr.dtype.str.encode())
        h.update(repr(arr.shape).encode())
        if arr.dtype.kind == "O":
            for item in arr.ravel():
                b = item if isinstance(item, bytes) else str(item).encode()
                h.update(len(b).to_bytes(4, "little"))
                h.update(b)
        else:
            h.update(arr.tobytes() if not arr.flags.c_contiguous else arr.data)
    h.update(repr(outputs).encode())
    return h.digest()


class ResultCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Outputs] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Outputs | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: Outputs) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
