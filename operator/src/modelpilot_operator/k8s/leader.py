"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does.

Every replica runs the watches (their caches stay warm); only the holder of the Lease
reconciles. The holder renews every ``retry_period``; a holder that could not renew within
``renew_deadline`` stops acting at once, before ``lease_duration`` runs out and another
replica may take the Lease, so two replicas never write at the same time. A replica that
finds the Lease held by its own identity (a restarted container of the same pod) takes it
at once; a clean shutdown releases it so the next replica need not wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .client import ApiError, KubeApi
from .kinds import LEASE

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> float | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retryPeriod < renewDeadline < leaseDuration")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self._clock = clock
        self._leading = False
        self._renewed_at = 0.0
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        """Holding the Lease, renewed within the renew deadline."""
        return self._leading and self._clock() - self._renewed_at < self.renew_deadline

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if release and self._leading:
            self._release()
        self._set(False)

    def _set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info(
                "%s leadership of lease %s/%s",
                "acquired" if leading else "lost",
                self.namespace,
                self.name,
            )
            if self.on_change is not None:
                self.on_change(leading)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.round()
            self._stop.wait(self.retry_period)

    def round(self) -> bool:
        """One try to acquire or renew; whether this replica leads afterwards."""
        try:
            ok = self.try_acquire_or_renew()
        except ApiError as err:
            log.warning("lease %s/%s: %s", self.namespace, self.name, err)
            ok = False
        except Exception as err:  # keep electing through network errors
            log.warning("lease %s/%s: %s", self.namespace, self.name, err)
            ok = False
        if ok:
            self._renewed_at = self._clock()
            self._set(True)
        elif not self.is_leader():
            self._set(False)
        return self.is_leader()

    def _lease(self, spec: dict[str, Any], version: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if version is not None:
            meta["resourceVersion"] = version
        return {
            "apiVersion": LEASE.api_version,
            "kind": LEASE.kind,
            "metadata": meta,
            "spec": spec,
        }

    def try_acquire_or_renew(self) -> bool:
        """One round: take a free or expired Lease, renew ours, or note the holder's."""
        now = self._clock()
        live = self.api.get(LEASE, self.namespace, self.name)
        spec_new = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "renewTime": _now(),
        }
        if live is None:
            self.api.create(self._lease(spec_new | {"acquireTime": _now(), "leaseTransitions": 0}))
            return True
        spec = live.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if self._observed != spec:
            # Expiry is judged by our clock since the record last changed, not by the
            # holder's timestamps (clocks of two machines need not agree).
            self._observed = dict(spec)
            self._observed_at = now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        mine = holder == self.identity
        expired = not holder or now - self._observed_at >= duration
        if not mine and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if mine and self._leading:
            spec_new["acquireTime"] = spec.get("acquireTime") or _now()
            spec_new["leaseTransitions"] = transitions
        else:
            spec_new["acquireTime"] = _now()
            spec_new["leaseTransitions"] = transitions + (0 if mine else 1)
        updated = self.api.replace(self._lease(spec_new, live["metadata"].get("resourceVersion")))
        self._observed = dict(updated.get("spec") or {})
        self._observed_at = now
        return True

    def _release(self) -> None:
        try:
            live = self.api.get(LEASE, self.namespace, self.name)
            if live is None or (live.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = dict(live["spec"])
            spec["holderIdentity"] = ""
            spec["leaseDurationSeconds"] = 1
            self.api.replace(self._lease(spec, live["metadata"].get("resourceVersion")))
        except Exception as err:  # best effort on the way out
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, err)
