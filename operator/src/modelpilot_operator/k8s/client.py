"""The API server, behind a small interface: get, list, server-side apply, delete.

:class:`KubeApi` is what the rest of ``k8s/`` uses; :class:`ApiServer` implements it with
the ``kubernetes`` client's ApiClient (plain REST paths, so custom kinds need no generated
classes), and the unit tests implement it with an in-memory fake. Every call that writes
counts in :attr:`ApiServer.writes`, which the no-op tests and the benchmark read.
"""

from __future__ import annotations

import builtins
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .kinds import Kind, kind_of

FIELD_MANAGER = "modelpilot"
STATUS_FIELD_MANAGER = "modelpilot-status"
# The rollout engine's part of status has a field manager of its own: server-side apply
# removes the fields a manager applied before and leaves out now, so the reconciler's
# status (versions, Ready, ...) and the rollout's (phase, step, analysis, ...) written
# under one manager would erase each other on every write.
ROLLOUT_FIELD_MANAGER = "modelpilot-rollout"


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ConflictError(ApiError):
    """409: another field manager owns a field, or the object changed meanwhile."""


class NotLeaderError(ApiError):
    """A write refused before it was sent: this replica does not hold the Lease."""

    def __init__(self) -> None:
        super().__init__(0, "NotLeader", "this replica is not the leader; nothing written")


class KubeApi(Protocol):
    """What the operator needs from the API server."""

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    def list(
        self, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]: ...

    def apply(
        self, obj: dict[str, Any], *, manager: str = FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply of ``obj`` (the fields ``manager`` owns)."""
        ...

    def apply_status(
        self, obj: dict[str, Any], *, manager: str = STATUS_FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply to the status subresource."""
        ...

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        """Delete (background propagation); False if it was already gone."""
        ...

    def create(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    def served_kinds(self, api_version: str) -> set[str]:
        """Kinds the API server serves under ``api_version`` (empty if none): discovery,
        which every authenticated user may read."""
        ...

    def merge_patch(
        self, kind: Kind, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386) of the object."""
        ...

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT ``obj`` as it is; its ``metadata.resourceVersion`` is the precondition
        (:class:`ConflictError` when the object changed since it was read)."""
        ...


class NoClusterError(RuntimeError):
    """Neither in-cluster configuration nor a kubeconfig leads to an API server."""


class ApiServer:
    """:class:`KubeApi` over a configured ``kubernetes.client.ApiClient``."""

    def __init__(
        self,
        api_client: Any,
        timeout: float = 30.0,
        on_write: Callable[[str, str], None] | None = None,
        may_write: Callable[[], bool] | None = None,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        self._on_request = on_request
        self._client = api_client
        self._timeout = timeout
        self.writes: Counter[str] = Counter()
        self._on_write = on_write
        self._may_write = may_write

    def _count_write(self, verb: str, kind: str) -> None:
        """Every write request, whatever it changes (an apply may change nothing).

        With ``may_write`` (leader election), a write it refuses raises
        :class:`NotLeaderError` before anything is sent."""
        if self._may_write is not None and not self._may_write():
            raise NotLeaderError
        self.writes[f"{verb} {kind}"] += 1
        if self._on_write is not None:
            self._on_write(verb, kind)

    @classmethod
    def from_environment(
        cls,
        context: str | None = None,
        on_write: Callable[[str, str], None] | None = None,
        may_write: Callable[[], bool] | None = None,
        on_request: Callable[[str], None] | None = None,
    ) -> ApiServer:
        """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            try:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    context=context, client_configuration=cfg
                )
            except (config.ConfigException, OSError) as err:
                raise NoClusterError(
                    "no Kubernetes cluster configured: not running in a pod, and no usable "
                    f"kubeconfig (set KUBECONFIG or pass --context): {err}"
                ) from err
        # Workers, watches and analysis run in threads: a connection each.
        cfg.connection_pool_maxsize = 32
        return cls(
            client.ApiClient(configuration=cfg),
            on_write=on_write,
            may_write=may_write,
            on_request=on_request,
        )

    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        if self._on_request is not None:
            self._on_request(method)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        params = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self._client.call_api(*params, _request_timeout=self._timeout)
            resp.read()
        except ApiException as exc:
            raise _error(exc.status or 0, exc.body) from None
        if resp.status >= 400:
            raise _error(resp.status, resp.data)
        data = resp.data
        return json.loads(data) if data else {}

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", kind.path(namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def list(
        self, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        items: list[dict[str, Any]] = self._call("GET", kind.path(namespace), query)["items"]
        for item in items:
            # Lists leave apiVersion/kind out of their items; the callers want them.
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items

    def _apply(self, path: str, obj: dict[str, Any], manager: str, force: bool) -> dict[str, Any]:
        query = [("fieldManager", manager)]
        if force:
            query.append(("force", "true"))
        self._count_write("apply", str(obj["kind"]))
        return self._call("PATCH", path, query, obj, "application/apply-patch+yaml")

    def apply(
        self, obj: dict[str, Any], *, manager: str = FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        meta = obj["metadata"]
        path = kind_of(obj).path(meta.get("namespace"), meta["name"])
        return self._apply(path, obj, manager, force)

    def apply_status(
        self, obj: dict[str, Any], *, manager: str = STATUS_FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        meta = obj["metadata"]
        path = kind_of(obj).path(meta.get("namespace"), meta["name"]) + "/status"
        return self._apply(path, obj, manager, force)

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        self._count_write("delete", kind.kind)
        try:
            self._call(
                "DELETE",
                kind.path(namespace, name),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                },
            )
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._count_write("create", str(obj["kind"]))
        return self._call("POST", kind_of(obj).path(obj["metadata"].get("namespace")), body=obj)

    def merge_patch(
        self, kind: Kind, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        self._count_write("patch", kind.kind)
        return self._call(
            "PATCH",
            kind.path(namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        )

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._count_write("update", str(obj["kind"]))
        meta = obj["metadata"]
        return self._call("PUT", kind_of(obj).path(meta.get("namespace"), meta["name"]), body=obj)

    def list_page(
        self, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Every object of ``kind`` matching the selector, and the list's resourceVersion
        (where a watch continues from)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        doc = self._call("GET", kind.path(namespace), query)
        items: list[dict[str, Any]] = doc["items"]
        for item in items:
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items, str(doc.get("metadata", {}).get("resourceVersion", ""))

    def watch(
        self,
        kind: Kind,
        namespace: str | None,
        label_selector: str,
        resource_version: str,
        timeout_s: int = 270,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Watch events ``(type, object)`` after ``resource_version`` until the server ends
        the watch (after ``timeout_s``); a 410 Gone raises :class:`ApiError` (relist)."""
        from kubernetes.client.exceptions import ApiException

        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_s)),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if self._on_request is not None:
            self._on_request("WATCH")
        params = self._client.param_serialize(
            method="GET",
            resource_path=kind.path(namespace),
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            resp = self._client.call_api(*params, _request_timeout=(10, timeout_s + 30))
        except ApiException as exc:
            raise _error(exc.status or 0, exc.body) from None
        raw = resp.response
        try:
            if resp.status >= 400:
                raise _error(resp.status, raw.data)
            buffer = b""
            for chunk in raw.stream(None, decode_content=False):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise _error(int(obj.get("code") or 500), json.dumps(obj))
                    obj.setdefault("apiVersion", kind.api_version)
                    obj.setdefault("kind", kind.kind)
                    yield str(event.get("type")), obj
        finally:
            raw.release_conn()

    def served_kinds(self, api_version: str) -> set[str]:
        try:
            doc = self._call("GET", _discovery_path(api_version))
        except ApiError as err:
            if err.status in (403, 404, 503):
                return set()
            raise
        return {r["kind"] for r in doc.get("resources", []) if "/" not in r.get("name", "")}


def _discovery_path(api_version: str) -> str:
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


def _error(status: int, body: Any) -> ApiError:
    reason, message = "", str(body or "")
    try:
        doc = json.loads(body) if body else {}
        reason, message = doc.get("reason", ""), doc.get("message", message)
    except (ValueError, TypeError, AttributeError):
        pass
    cls = ConflictError if status == 409 else ApiError
    return cls(status, reason, message)
