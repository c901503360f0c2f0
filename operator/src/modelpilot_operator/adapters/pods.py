"""Asking a runtime pod which execution provider serves a model version (HTTP)."""

from __future__ import annotations

import logging

from ..k8s.observe import ProviderProbe

log = logging.getLogger(__name__)


def http_provider_probe(timeout: float = 2.0) -> ProviderProbe:
    import httpx

    def probe(ip: str, port: int, model: str, version: str) -> str | None:
        url = f"http://{ip}:{port}/v2/models/{model}/versions/{version}"
        try:
            resp = httpx.get(url, timeout=timeout)
            resp.raise_for_status()
            provider = resp.json().get("parameters", {}).get("execution_provider")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.debug("provider probe %s failed: %s", url, exc)
            return None
        return str(provider) if provider else None

    return probe
