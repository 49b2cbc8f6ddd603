"""Tell the operator at once that the stack needs more inference replicas, instead of at its next poll.

The operator reads the API pods' figures every `--autoscale-interval-seconds` (15 s by default), so
a first request at zero replicas used to wait most of that interval before a replica was even asked
for. `--demand_lease <namespace>/<name>` names a Lease the operator creates for a stack its
autoscaling can grow, and watches; when this process starts holding a request it renews that Lease
(`holderIdentity`: this pod, `renewTime`: now), and the operator's watch event makes it read the API
pods' figures and decide right away. The decision itself is unchanged: the Lease carries no count,
only "look now", so a stale or forged renewal costs one early look and nothing more.

The same renewal is sent when this server alone (its `--workers` counted together) already has more
generations in flight than `--scale_up_in_flight` (the stack's targetInFlight) per ready replica
(`ScaleUpWake`): the operator sums every API pod's figures, so its next decision would scale up
anyway; the wake only makes it come now. A load step then waits for the replicas' start, not for
the poll as well.

Why a Lease: it is the object Kubernetes has for small, frequent writes by many holders (node
heartbeats, leader election), and RBAC can grant `patch` on that one name and nothing else (the
stack's api Role does). Per process, held requests renew it at most once per `RENEW_EVERY_S`, load
at most once per `LOAD_RENEW_EVERY_S`; a failed renewal is logged and the operator's poll still sees
the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

from h2ogpt_api import metrics
from h2ogpt_api.endpointslices import kube_config

log = logging.getLogger("h2ogpt_api.demand")

# A held request renews at most this often: a burst of 200 held requests is one write, and while
# requests keep arriving at zero replicas (the operator restarting, say) it is renewed again.
RENEW_EVERY_S = 5.0
# Load renews only for a larger ask than the last (ScaleUpWake), so a ramp writes at most maxReplicas
# times per process whatever this is; it only joins the asks of one second into one write, where a
# 5 s wait would hold each step of a ramp back (bench/autoscale.py: a 5x step followed in up to 31 s
# at the default interval with 5 s, 20 s with 1 s).
LOAD_RENEW_EVERY_S = 1.0
Cause = Literal["held", "load"]
EVERY_S: dict[Cause, float] = {"held": RENEW_EVERY_S, "load": LOAD_RENEW_EVERY_S}


def parse_lease(target: str) -> tuple[str, str]:
    """`<namespace>/<name>` -> (namespace, name)."""
    namespace, _, name = target.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"--demand_lease {target!r}: expected <namespace>/<name>")
    return namespace, name


def renewal(identity: str, now: float) -> dict[str, Any]:
    """The merge patch that renews the Lease: who asked and when (MicroTime, as Kubernetes writes it)."""
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"spec": {"holderIdentity": identity, "renewTime": stamp}}


class DemandSignal:
    """`signal()` (on the event loop, cheap, never raises) renews the Lease in the background; it
    returns whether it did (False within `EVERY_S[cause]` of the last renewal for that cause, or while
    one is being sent)."""

    def __init__(
        self,
        target: str,
        *,
        identity: str | None = None,
        kubeconfig: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace, self.name = parse_lease(target)
        self.identity = identity or socket.gethostname()  # the pod's name in a pod
        self._config = kube_config("--demand_lease", kubeconfig)
        self._clock = clock
        self._last: dict[Cause, float] = {}  # the last renewal, by cause
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None

    def signal(self, cause: Cause = "held") -> bool:
        """`cause`: what asks (`held`, `load`), for the renewals metric."""
        now = self._clock()
        last = self._last.get(cause)
        if last is not None and now - last < EVERY_S[cause]:
            return False
        if self._task is not None and not self._task.done():
            return False
        self._last[cause] = now
        self._task = asyncio.create_task(self._renew(cause), name="demand-lease-renewal")
        return True

    async def _renew(self, cause: Cause) -> None:
        # lightkube, as for the EndpointSlice watch (endpointslices.py); imported only in the cluster.
        from lightkube import AsyncClient  # noqa: PLC0415
        from lightkube.resources.coordination_v1 import Lease  # noqa: PLC0415
        from lightkube.types import PatchType  # noqa: PLC0415

        try:
            if self._client is None:
                self._client = AsyncClient(config=self._config, namespace=self.namespace)
            await self._client.patch(
                Lease, self.name, renewal(self.identity, time.time()),
                namespace=self.namespace, patch_type=PatchType.MERGE,
            )  # fmt: skip
            metrics.DEMAND_RENEWALS.labels(result="sent", cause=cause).inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.DEMAND_RENEWALS.labels(result="failed", cause=cause).inc()
            log.warning(
                "renewing the demand Lease %s/%s (%s) failed (%s: %s); the operator's poll will read the "
                "same figures instead", self.namespace, self.name, cause, type(exc).__name__, exc,
            )  # fmt: skip

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()


class ScaleUpWake:
    """Wakes the operator (`signal`, a `DemandSignal.signal`) when this server alone (its `--workers`
    together) asks for more inference replicas than are ready: ceil(in flight / target_in_flight), at
    most `max_replicas`. Each worker process has its own, so two may send the same ask once each.

    The operator's decision sums every API pod's in-flight figure, so what one pod asks for is a floor
    of what it will decide: a wake never asks for more than the poll would. Each larger ask wakes it
    once (a wake the Lease's throttle drops is tried again by the next request); an ask the ready
    replicas already meet starts over, so the next step up wakes it again. At `max_replicas` nothing
    is sent: the operator could not add one, and a stack held at its peak writes nothing.
    Pure and synchronous: `started` runs on the event loop for every routed generation.
    """

    def __init__(self, target_in_flight: int, max_replicas: int, signal: Callable[[], bool]) -> None:
        if target_in_flight < 1 or max_replicas < 1:
            raise ValueError("ScaleUpWake: target_in_flight and max_replicas must be at least 1")
        self.target_in_flight = target_in_flight
        self.max_replicas = max_replicas
        self._signal = signal
        self._asked = 0  # the ask last sent and not yet met by ready replicas

    def started(self, in_flight: int, ready: int) -> None:
        """A generation started: `in_flight` the server's generations now (it included), `ready` the
        replicas it routes to."""
        ask = min(math.ceil(in_flight / self.target_in_flight), self.max_replicas)
        if ask <= ready:
            self._asked = 0
        elif ask > self._asked and self._signal():
            self._asked = ask
