"""Stands in for a pod's service-account mount in its Python processes.

The node agent puts this folder first on a pod's PYTHONPATH.
"""

from __future__ import annotations

import os
from typing import Any

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
