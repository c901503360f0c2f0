"""Watch caches: list once, then watch, and keep every object of one kind in memory.

An :class:`Informer` holds the objects of one kind that match a server-side label selector
(the operator's children and their pods carry ``app.kubernetes.io/managed-by=modelpilot``,
so nothing else is streamed), in one namespace or all. Each change calls ``on_change`` with
the object (the controller enqueues its owner). Reads come from memory: a reconcile lists
nothing. A watch that ends is resumed from the last resourceVersion seen; a 410 Gone (or
any error) relists after a back-off. A kind whose CRD is not installed is retried now and
then, so installing Istio or Gateway API later is noticed.

Writes the operator makes are put into the cache at once (:meth:`Informer.store`): the next
reconcile must not act on the object as it was before its own write. An older version of an
object never replaces a newer one (resourceVersions of one kind compare as etcd revisions).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .client import ApiError
from .kinds import Kind

log = logging.getLogger(__name__)

ObjKey = tuple[str, str]
OnChange = Callable[[str, dict[str, Any]], None]


class WatchApi(Protocol):
    def list_page(
        self, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> tuple[list[dict[str, Any]], str]: ...

    def watch(
        self,
        kind: Kind,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        timeout_s: int = 270,
    ) -> Iterator[tuple[str, dict[str, Any]]]: ...


def newer(candidate: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Whether ``candidate`` is at least as new as ``current`` (same object)."""
    if current is None:
        return True
    a = candidate.get("metadata", {}).get("resourceVersion", "")
    b = current.get("metadata", {}).get("resourceVersion", "")
    if a.isdigit() and b.isdigit():
        return int(a) >= int(b)
    return True


def same_version(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    """Whether ``b`` is ``a`` as the cache holds it already (same resourceVersion)."""
    version = a.get("metadata", {}).get("resourceVersion")
    return (
        b is not None and bool(version) and b.get("metadata", {}).get("resourceVersion") == version
    )


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without its managedFields (a third of a Deployment's size, never read)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def _key(obj: dict[str, Any]) -> ObjKey:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


class Informer:
    def __init__(
        self,
        api: WatchApi,
        kind: Kind,
        namespace: str | None,
        label_selector: str,
        on_change: OnChange | None = None,
        watch_timeout_s: int = 270,
        retry_s: float = 5.0,
        missing_retry_s: float = 60.0,
    ) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace
        self.selector = label_selector
        self.on_change = on_change
        self._timeout = watch_timeout_s
        self._retry = retry_s
        self._missing_retry = missing_retry_s
        self._objects: dict[ObjKey, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.synced = threading.Event()
        self.served = True
        self._thread: threading.Thread | None = None

    # -- reads -------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def items(
        self, namespace: str | None = None, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Cached objects (shared: callers must not change them), by namespace and labels."""
        with self._lock:
            objs = list(self._objects.values())
        out = []
        for obj in objs:
            meta = obj["metadata"]
            if namespace is not None and (meta.get("namespace") or "") != namespace:
                continue
            have = meta.get("labels") or {}
            if labels and any(have.get(k) != v for k, v in labels.items()):
                continue
            out.append(obj)
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    # -- writes from the operator ------------------------------------------------------

    def store(self, obj: dict[str, Any]) -> None:
        """Put an object the operator just wrote (the API's answer) into the cache."""
        obj = slim(obj)
        with self._lock:
            key = _key(obj)
            if newer(obj, self._objects.get(key)):
                self._objects[key] = obj

    def discard(self, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((namespace, name), None)

    # -- the watch ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{self.kind.plural}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _apply_event(self, type_: str, obj: dict[str, Any]) -> None:
        obj = slim(obj)
        key = _key(obj)
        with self._lock:
            if type_ == "DELETED":
                self._objects.pop(key, None)
            elif same_version(obj, self._objects.get(key)) or not newer(
                obj, self._objects.get(key)
            ):
                # The operator's own write, already stored; or an event older than it.
                return
            else:
                self._objects[key] = obj
        if self.on_change is not None:
            self.on_change(type_, obj)

    def _relist(self) -> str:
        items, version = self.api.list_page(self.kind, self.namespace, self.selector)
        self.replace_all(items)
        return version

    def replace_all(self, items: list[dict[str, Any]]) -> None:
        """The cache becomes ``items`` (a full list); ``on_change`` hears of every object
        that appeared, changed or went."""
        fresh = {_key(o): slim(o) for o in items}
        with self._lock:
            before = self._objects
            self._objects = fresh
        self.served = True
        self.synced.set()
        if self.on_change is not None:
            for key, obj in before.items():
                if key not in fresh:
                    self.on_change("DELETED", obj)
            for key, obj in fresh.items():
                old = before.get(key)
                if old is None:
                    self.on_change("ADDED", obj)
                elif old["metadata"].get("resourceVersion") != obj["metadata"].get(
                    "resourceVersion"
                ):
                    self.on_change("MODIFIED", obj)

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._relist()
                for type_, obj in self.api.watch(
                    self.kind, self.namespace, self.selector, version, self._timeout
                ):
                    if self._stop.is_set():
                        return
                    rv = obj.get("metadata", {}).get("resourceVersion")
                    if rv:
                        version = rv
                    if type_ != "BOOKMARK":
                        self._apply_event(type_, obj)
            except ApiError as err:
                version = ""
                if err.status == 404:
                    # The CRD behind this kind is not installed (yet).
                    self.served = False
                    self.synced.set()
                    self._stop.wait(self._missing_retry)
                    continue
                if err.status != 410:
                    log.warning("watch of %s failed: %s", self.kind.plural, err)
                    self._stop.wait(self._retry)
            except Exception as err:  # a watch must outlive any network error
                log.warning("watch of %s broke: %s; relisting", self.kind.plural, err)
                version = ""
                self._stop.wait(self._retry)
