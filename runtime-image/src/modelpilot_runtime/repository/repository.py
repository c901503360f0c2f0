"""The model repository on disk and the set of versions being served.

Layout: `<root>/<model>/<version>/model.onnx` (or `model.mar`, see backends.torchserve), with
an optional `<root>/<model>/config.yaml`
(see `modelpilot_runtime.config`). A model directory that holds `model.onnx` itself is served
as version "1". `sync()` compares the disk with what is served: versions the policy newly
selects are loaded and warmed up in a worker thread and only then served; versions no longer
selected are drained and unloaded once every selected version is READY (so a broken or
half-copied new version leaves the old one serving), deleted ones at once; a version that
fails to load is kept as FAILED with its reason (status endpoints, log, `model_ready` 0) and
tried again when its files change, while the versions already serving keep serving. A served
version whose files change in place (name, size or modification time of any entry) is loaded
again the same way: the new copy replaces the old only once READY; if it fails, the old copy
keeps serving with the failure as its reason. `run_polling()` calls `sync()`
every `poll_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelpilot_runtime.config import (
    CONFIG_NAMES,
    ConfigError,
    ModelConfig,
    load_model_config,
    version_sort_key,
)
from modelpilot_runtime.errors import NotFoundError, RejectedError
from modelpilot_runtime.metrics import Metrics
from modelpilot_runtime.repository.model import FAILED, READY, ServedVersion, version_stamp

log = logging.getLogger(__name__)

MODEL_FILES = ("model.onnx", "model.mar")


def _is_version_dir(path: Path) -> bool:
    return (
        path.is_dir()
        and not path.name.startswith(".")
        and any((path / f).is_file() for f in MODEL_FILES)
    )


class ModelRepository:
    def __init__(
        self,
        metrics: Metrics,
        cache_dir: Path,
        defaults: dict[str, Any] | None = None,
        root: Path | None = None,
        models: dict[str, Path] | None = None,
        poll_interval: float = 0.0,
    ) -> None:
        self.metrics = metrics
        self.cache_dir = cache_dir
        self.defaults = defaults or {}
        self.root = root
        self.explicit = models or {}
        self.poll_interval = poll_interval
        # model -> version -> the served (or failed) version
        self.models: dict[str, dict[str, ServedVersion]] = {}
        self.model_errors: dict[str, str] = {}
        self._default: dict[str, ServedVersion] = {}
        self._config_stamps: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self.synced = False

    # -- discovery -------------------------------------------------------------------------

    def _model_dirs(self) -> Iterator[tuple[str, Path]]:
        yield from self.explicit.items()
        if self.root is not None and self.root.is_dir():
            for path in sorted(self.root.iterdir()):
                if (
                    path.is_dir()
                    and not path.name.startswith(".")
                    and path.name not in self.explicit
                ):
                    yield path.name, path

    @staticmethod
    def _versions_on_disk(model_dir: Path) -> dict[str, Path]:
        if any((model_dir / f).is_file() for f in MODEL_FILES):
            return {"1": model_dir}
        try:
            return {p.name: p for p in model_dir.iterdir() if _is_version_dir(p)}
        except OSError:
            return {}

    # -- reconciliation --------------------------------------------------------------------

    async def sync(self) -> None:
        async with self._lock:
            await self._sync()
            self.synced = True

    async def _sync(self) -> None:
        seen: set[str] = set()
        for name, model_dir in list(self._model_dirs()):
            seen.add(name)
            try:
                config = load_model_config(model_dir, self.defaults)
            except ConfigError as exc:
                if self.model_errors.get(name) != str(exc):
                    log.error("%s", exc)
                self.model_errors[name] = str(exc)
                continue
            self.model_errors.pop(name, None)
            stamp = _config_stamp(model_dir)
            config_changed = self._config_stamps.get(name, stamp) != stamp
            self._config_stamps[name] = stamp
            on_disk = self._versions_on_disk(model_dir)
            wanted = config.version_policy.select(list(on_disk))
            served = self.models.setdefault(name, {})
            for version in wanted:
                current = served.get(version)
                if (
                    current is not None
                    and not config_changed
                    and not self._changed(current, on_disk[version])
                ):
                    continue
                await self._load(name, version, model_dir, on_disk[version], config)
            # A version the policy no longer selects keeps serving until every selected one
            # is ready: a broken or half-copied new version never takes a model down. One
            # whose directory is gone is unloaded regardless.
            replaced = all(v in served and served[v].state == READY for v in wanted)
            for version in [v for v in served if v not in wanted]:
                if replaced or version not in on_disk or served[version].state != READY:
                    await self._unload(name, version)
            self._refresh_default(name)
        for name in [n for n in self.models if n not in seen]:
            for version in list(self.models[name]):
                await self._unload(name, version)
            del self.models[name]
            self._default.pop(name, None)
            self._config_stamps.pop(name, None)
        for name in [n for n in self.model_errors if n not in seen]:
            del self.model_errors[name]

    @staticmethod
    def _changed(current: ServedVersion, version_dir: Path) -> bool:
        """Whether the version's files changed since it was loaded (or last failed to)."""
        stamp = version_stamp(version_dir)
        return stamp != current.stamp and stamp != current.failed_stamp

    async def _load(
        self, name: str, version: str, model_dir: Path, version_dir: Path, config: ModelConfig
    ) -> None:
        candidate = ServedVersion(
            name, version, model_dir, version_dir, config, self.metrics, self.cache_dir
        )
        previous = self.models[name].get(version)
        log.info("loading %s/%s from %s", name, version, version_dir)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, candidate.load_blocking)
            candidate.activate()
        except Exception as exc:
            reason = f"failed to load {version_dir}: {exc}"
            log.error("%s/%s: %s", name, version, reason)
            if previous is not None and previous.state == READY:
                # A broken replacement never takes the place of a working version: the loaded
                # one keeps serving, and says why its files on disk are not what it serves.
                previous.failed_stamp = candidate.stamp
                previous.reason = f"serving the copy loaded before; the changed files {reason}"
                return
            candidate.fail(reason)
            self.models[name][version] = candidate
            return
        self.models[name][version] = candidate
        self._refresh_default(name)
        if previous is not None and previous.state != FAILED:
            await previous.drain_and_unload()
            # Same (model, version) labels: the old instance's "not ready" must not stick.
            candidate.mark_ready()

    async def _unload(self, name: str, version: str) -> None:
        served = self.models[name].pop(version)
        self._refresh_default(name)
        log.info("unloading %s/%s", name, version)
        await served.drain_and_unload()
        for provider in ("", served.info.provider if served.info else ""):
            with contextlib.suppress(KeyError):
                self.metrics.model_ready.remove(name, version, provider)

    def _refresh_default(self, name: str) -> None:
        ready = [v for v in self.models.get(name, {}).values() if v.state == READY]
        if ready:
            self._default[name] = max(ready, key=lambda v: version_sort_key(v.version))
        else:
            self._default.pop(name, None)

    async def run_polling(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.sync()
            except Exception:  # a bad scan must not end polling
                log.exception("repository poll failed")

    async def close(self) -> None:
        async with self._lock:
            for name in list(self.models):
                for version in list(self.models[name]):
                    await self._unload(name, version)

    # -- lookups (request path) ------------------------------------------------------------

    def get(self, model: str, version: str | None = None) -> ServedVersion:
        """The version to serve, or 404 (unknown) / 503 (known but not ready)."""
        if version is None or version == "":
            served = self._default.get(model)
            if served is not None:
                if served.state != READY:  # its backend lost its model server for a while
                    raise RejectedError(
                        f"model {model!r} version {served.version!r} is {served.state}",
                        "not_ready",
                    )
                return served
            if model not in self.models:
                raise NotFoundError(f"unknown model {model!r}")
            raise RejectedError(f"model {model!r} has no ready version", "not_ready")
        versions = self.models.get(model)
        if versions is None:
            raise NotFoundError(f"unknown model {model!r}")
        served = versions.get(version)
        if served is None:
            raise NotFoundError(
                f"model {model!r} has no version {version!r}; "
                f"it serves {', '.join(sorted(versions, key=version_sort_key)) or 'none'}"
            )
        if served.state != READY:
            raise RejectedError(
                f"model {model!r} version {version!r} is {served.state}", "not_ready"
            )
        return served

    def find(self, model: str, version: str | None = None) -> ServedVersion | None:
        """Like `get`, but None instead of an error, and not-ready versions too."""
        versions = self.models.get(model)
        if not versions:
            return None
        if version:
            return versions.get(version)
        return self._default.get(model) or max(
            versions.values(), key=lambda v: version_sort_key(v.version)
        )

    @property
    def ready(self) -> bool:
        """Every model found has a version serving. A model whose config broke after it
        loaded keeps serving with the config it loaded with (and the error is reported)."""
        if not self.synced:
            return False
        names = set(self.models) | set(self.model_errors)
        return all(name in self._default and self._default[name].ready for name in names)

    def index(self) -> list[dict[str, str]]:
        out = [
            {"name": name, "version": v.version, "state": v.state, "reason": v.reason}
            for name, versions in sorted(self.models.items())
            for v in sorted(versions.values(), key=lambda v: version_sort_key(v.version))
        ]
        out += [
            {"name": n, "version": "", "state": "FAILED", "reason": r}
            for n, r in sorted(self.model_errors.items())
        ]
        return out


def _config_stamp(model_dir: Path) -> float:
    for name in CONFIG_NAMES:
        try:
            return (model_dir / name).stat().st_mtime
        except OSError:
            continue
    return 0.0
