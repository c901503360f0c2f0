"""What the Gateways behind a ModelDeployment's HTTPRoute support, read with a short cache.

The decision is pure (:mod:`modelpilot_operator.builders.gateway`); this reads its inputs:
each parent Gateway's ``gatewayClassName`` and that GatewayClass's
``status.supportedFeatures``. Gateways and GatewayClasses are not the operator's children
(no label to watch them by) and change rarely, so each is fetched at most once per
``ttl_s`` rather than on every pass. A read that fails counts as unknown (the mirror is
rendered, as without a feature list) and is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..api.v1alpha1 import ModelDeployment
from ..builders.gateway import gateway_refs, supported_features
from .client import ApiError, KubeApi
from .kinds import GATEWAY, GATEWAY_CLASS, Kind

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0


class GatewayFeatures:
    def __init__(
        self,
        api: KubeApi,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[tuple[str, str, str], tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def _get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kind.kind, namespace or "", name)
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        try:
            obj = self.api.get(kind, namespace, name)
        except ApiError as err:
            log.warning("could not read %s %s: %s", kind.kind, name, err)
            obj = None
        with self._lock:
            self._cache[key] = (now, obj)
        return obj

    def classes(self, md: ModelDeployment) -> dict[str, frozenset[str] | None]:
        """The GatewayClass of each Gateway the route attaches to, with the features it
        publishes (None: unknown). A Gateway not found, or without a class, is left out."""
        out: dict[str, frozenset[str] | None] = {}
        for namespace, name in gateway_refs(md):
            gateway = self._get(GATEWAY, namespace, name)
            class_name = ((gateway or {}).get("spec") or {}).get("gatewayClassName")
            if not class_name:
                continue
            out[str(class_name)] = supported_features(
                self._get(GATEWAY_CLASS, None, str(class_name))
            )
        return out
