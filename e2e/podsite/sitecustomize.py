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


# The service-account volume: a container sees it at the well-known path, this pod's
# processes find it in the folder the node agent made. Redirecting the few calls that
# Kubernetes clients use to read it (the token, the CA, the namespace) stands in for the
# container's mount, so in-cluster configuration works unchanged.
_SA_DIR = os.environ.get("MODELPILOT_SERVICEACCOUNT_DIR", "")
_SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def _in_pod(path: Any) -> Any:
    if isinstance(path, str) and (path == _SA_MOUNT or path.startswith(_SA_MOUNT + "/")):
        return _SA_DIR + path[len(_SA_MOUNT) :]
    return path


if _SA_DIR:
    import builtins
    import io
    import ssl

    _open = builtins.open
    _exists = os.path.exists
    _isfile = os.path.isfile
    _load_verify = ssl.SSLContext.load_verify_locations

    def _pod_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        return _open(_in_pod(file), *args, **kwargs)

    def _pod_load_verify(
        self: ssl.SSLContext, cafile: Any = None, capath: Any = None, cadata: Any = None
    ) -> None:
        _load_verify(self, _in_pod(cafile), _in_pod(capath), cadata)

    def _pod_exists(path: Any) -> bool:
        return _exists(_in_pod(path))

    def _pod_isfile(path: Any) -> bool:
        return _isfile(_in_pod(path))

    builtins.open = _pod_open
    io.open = _pod_open
    os.path.exists = _pod_exists
    os.path.isfile = _pod_isfile
    ssl.SSLContext.load_verify_locations = _pod_load_verify  # type: ignore[method-assign]
