"""Leader election on a coordination.k8s.io/v1 Lease, so two replicas never both act.

The algorithm is client-go's: a candidate takes the Lease when it is free or when its record has
not changed for `lease_seconds` as seen on the candidate's own clock (so clock skew between
nodes does not matter); the leader renews every `renew_seconds`; writes use the Lease's
resourceVersion, so two candidates cannot both win. A leader that fails to renew for
`lease_seconds` stands down (the process exits and restarts as a candidate).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from h2ogpt_operator import metrics
from h2ogpt_operator.kube import APISERVER_ERRORS, Kube, now_rfc3339

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
        retry_seconds: float = 2.0,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.retry_seconds = retry_seconds
        self.is_leader = asyncio.Event()
        self.lost = False
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    def _lease(self, spec: dict[str, Any], resource_version: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def try_acquire_or_renew(self) -> bool:
        """One attempt (blocking): True when this replica holds the Lease afterwards."""
        now = now_rfc3339(micro=True)
        lease = self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
        mine = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        }
        if lease is None:
            return self.kube.create(self._lease(mine)) is not None
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed_record:
            self._observed_record, self._observed_at = record, time.monotonic()
        holder = spec.get("holderIdentity")
        if holder == self.identity:
            updated = {**spec, "renewTime": now, "leaseDurationSeconds": self.lease_seconds}
        else:
            duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
            if holder and time.monotonic() - self._observed_at < duration:
                return False  # someone else holds a live Lease
            updated = {**mine, "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1}
        result = self.kube.replace(self._lease(updated, lease["metadata"]["resourceVersion"]))
        return result is not None

    async def _attempt(self) -> bool:
        try:
            return await asyncio.to_thread(self.try_acquire_or_renew)
        except APISERVER_ERRORS as exc:  # a renewal that got no answer is a failed one, not a crash
            log.warning("leader election: %s", exc)
            return False

    async def run(self, on_lost: Callable[[], None]) -> None:
        """Wait to become leader, then renew until the Lease is lost (then call `on_lost` and return)."""
        log.info("waiting for the leader Lease %s/%s as %s", self.namespace, self.name, self.identity)
        acquired = await self._attempt()
        while not acquired:
            await asyncio.sleep(self.retry_seconds)
            acquired = await self._attempt()
        log.info("became the leader as %s", self.identity)
        metrics.LEADER.set(1)
        self.is_leader.set()
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_seconds)
            if await self._attempt():
                last_renewed = time.monotonic()
            elif time.monotonic() - last_renewed > self.lease_seconds - self.renew_seconds:
                log.error("lost the leader Lease %s/%s; standing down", self.namespace, self.name)
                self.lost = True
                self.is_leader.clear()
                metrics.LEADER.set(0)
                on_lost()
                return

    def release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over at once (blocking)."""
        if not self.is_leader.is_set():
            return
        lease = self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        spec = {
            **lease["spec"],
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "renewTime": now_rfc3339(True),
        }
        self.kube.replace(self._lease(spec, lease["metadata"]["resourceVersion"]))
        self.is_leader.clear()
        metrics.LEADER.set(0)
