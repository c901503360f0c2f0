"""Binds a pod's Python processes to the pod's own address.

The node agent puts this folder first on a pod's PYTHONPATH. In a real pod, binding
0.0.0.0 means the pod's network namespace; here every pod shares the machine's, so a
bind to the unspecified address is narrowed to the pod IP: replicas of one pod can then
all listen on the same port, each on its own address.
"""

from __future__ import annotations

import os
import socket
from typing import Any

_POD_IP = os.environ.get("MODELPILOT_POD_IP", "")
_original_bind = socket.socket.bind


def _bind(self: socket.socket, address: Any, /) -> None:
    if (
        _POD_IP
        and self.family == socket.AF_INET
        and isinstance(address, tuple)
        and address[0] in ("", "0.0.0.0")
    ):
        address = (_POD_IP, *address[1:])
    _original_bind(self, address)


if _POD_IP:
    socket.socket.bind = _bind  # type: ignore[method-assign,assignment]
