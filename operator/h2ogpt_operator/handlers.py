"""kopf handlers: thin. Every watch event only enqueues the stack it concerns (a demand Lease renewed
by an api pod also wakes the autoscaler).

The CR and every labelled child (Deployments, StatefulSets, Services, ConfigMaps, Secrets, PVCs,
ServiceMonitors, NetworkPolicies, the api pods' ServiceAccounts, Roles and RoleBindings, the demand
Lease, pods) are watched; a child event enqueues its owner by the
`app.kubernetes.io/instance` label, so a child deleted or edited by hand is restored within
seconds. A Secret a stack's pods read (the user's own, referenced by the CR) enqueues that stack
when it appears, changes or goes. The same watches feed the indexes the reconciler reads
(watchcache.py). Only
event-watching and indexing handlers are used: kopf then writes nothing to the CR (no
finalizer, no progress annotations), which keeps deletion free of the operator and a steady
state free of writes.

Every handler here (and every index in watchcache.py) is a coroutine function: kopf runs those on
its event loop, but a plain function in its thread pool. The work queue, the Secret readers and
the indexes belong to the loop and are not thread-safe: from a thread, a lost update in the
queue's semaphore can stop every worker without a word.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import kopf

from h2ogpt_operator.models import GROUP, PLURAL, VERSION
from h2ogpt_operator.watchcache import (
    CHILD_RESOURCES as CACHED_CHILDREN,
)
from h2ogpt_operator.watchcache import (
    OURS,
    POD_RESOURCE,
    SECRET_RESOURCE,
    WatchCache,
)
from h2ogpt_operator.workqueue import Key, WorkQueue

log = logging.getLogger(__name__)

DEMAND_RESOURCE = ("coordination.k8s.io", "v1", "leases")
CHILD_RESOURCES = [
    *[(group, version, plural) for group, version, plural, _kind in CACHED_CHILDREN],
    SECRET_RESOURCE,
    POD_RESOURCE,
]


@dataclass
class SecretReaders:
    """Which stacks' pods read which Secret ((namespace, secret name) -> stacks), present or not yet.

    A change to such a Secret (created, rotated, deleted) enqueues its readers at once: their pod
    templates carry a digest of the keys they read, so a rotation rolls them within one reconcile.
    """

    reading: dict[tuple[str, str], set[Key]] = field(default_factory=dict)

    def read(self, stack: Key, secret_names: Iterable[str]) -> None:
        """Record the Secrets a stack reads now (replacing what it read before)."""
        namespace = stack[0]
        wanted = {(namespace, secret_name) for secret_name in secret_names}
        for secret_key in [k for k, stacks in self.reading.items() if stack in stacks and k not in wanted]:
            self.reading[secret_key].discard(stack)
            if not self.reading[secret_key]:
                del self.reading[secret_key]
        for secret_key in wanted:
            self.reading.setdefault(secret_key, set()).add(stack)

    def readers(self, namespace: str, secret_name: str) -> set[Key]:
        return set(self.reading.get((namespace, secret_name), ()))


def _ignore(_key: Key) -> None:
    return None


@dataclass
class HandlerContext:
    queue: WorkQueue
    cache: WatchCache = field(default_factory=WatchCache)
    secret_readers: SecretReaders = field(default_factory=SecretReaders)
    # The autoscaler's `wake`: a stack's api pods renewed its demand Lease (they need more replicas).
    wake_autoscaler: Callable[[Key], None] = _ignore


def build_registry(context: HandlerContext) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    context.cache.register(registry)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Events are posted by the reconciler itself; kopf must not write anything on its own.
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    def news(stack: Key, event: kopf.RawEvent) -> bool:
        """Every event but the echo of the operator's own last write (its status patch, an apply)."""
        body = event.get("object") or {}
        kind, name = body.get("kind", ""), (body.get("metadata") or {}).get("name", "")
        return event.get("type") == "DELETED" or not context.cache.echoes_own_write(stack, kind, name, body)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def on_stack(event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
        key = (namespace or "", name)
        # A deletion runs the stack once more: the reconcile finds it gone and drops what the
        # operator held for it (its readiness series, its queue and cache entries) at once, not when
        # the garbage collector gets round to its children.
        if news(key, event):
            context.queue.add(key)

    for group, version, plural in CHILD_RESOURCES:

        @kopf.on.event(group, version, plural, labels=OURS, id=f"child-{plural}", registry=registry)
        async def on_child(
            event: kopf.RawEvent, labels: kopf.Labels, namespace: str | None, **_: Any
        ) -> None:
            key = (namespace or "", labels["app.kubernetes.io/instance"])
            if news(key, event):
                context.queue.add(key)

    # Besides enqueueing the stack like every child event: a renewal by an api pod (not the operator's
    # own apply, not the listing at start) asks the autoscaler to look at the stack now.
    @kopf.on.event(*DEMAND_RESOURCE, labels=OURS, id="demand", registry=registry)
    async def on_demand(event: kopf.RawEvent, labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
        key = (namespace or "", labels["app.kubernetes.io/instance"])
        renewed = ((event.get("object") or {}).get("spec") or {}).get("renewTime")
        if event.get("type") == "MODIFIED" and renewed and news(key, event):
            context.wake_autoscaler(key)

    @kopf.on.event(*SECRET_RESOURCE, id="read-secrets", registry=registry)
    async def on_secret(event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
        for stack in context.secret_readers.readers(namespace or "", name):
            if news(stack, event):
                context.queue.add(stack)

    return registry
