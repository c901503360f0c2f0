"""What the pods report: the execution provider each version's runtime actually uses.

The runtime answers ``GET /v2/models/<model>/versions/<version>`` with
``parameters.execution_provider`` (e.g. ``CUDAExecutionProvider``); the operator asks one
ready pod per version (through :mod:`modelpilot_operator.adapters.pods`) and remembers the
answer per pod, so a steady resync asks nobody.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

ProviderProbe = Callable[[str, int, str, str], str | None]
"""(pod IP, port, model, version) -> provider, or None if the pod did not say."""


def pod_is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class ProviderCache:
    """Providers by pod uid (a pod's provider does not change), bounded in size."""

    def __init__(self, probe: ProviderProbe | None, size: int = 4096) -> None:
        self._probe = probe
        self._size = size
        self._by_pod: OrderedDict[str, str] = OrderedDict()

    def provider(
        self, pods: list[dict[str, Any]], port: int, model: str, version: str
    ) -> str | None:
        ready = [p for p in pods if pod_is_ready(p) and p.get("status", {}).get("podIP")]
        for pod in ready:
            uid = pod["metadata"].get("uid", "")
            if uid in self._by_pod:
                return self._by_pod[uid]
        if self._probe is None:
            return None
        for pod in ready[:1]:
            found = self._probe(pod["status"]["podIP"], port, model, version)
            if found:
                self._by_pod[pod["metadata"].get("uid", "")] = found
                while len(self._by_pod) > self._size:
                    self._by_pod.popitem(last=False)
                return found
        return None
