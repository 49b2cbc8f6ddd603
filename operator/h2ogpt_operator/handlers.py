"""kopf handlers: thin. Every watch event only enqueues the stack it concerns.

The CR and every labelled child (Deployments, StatefulSets, Services, ConfigMaps, Secrets, PVCs,
pods, NetworkPolicies) are watched; a child event enqueues its owner by the
`app.kubernetes.io/instance` label, so a child deleted or edited by hand is restored within seconds.
Only event-watching handlers are used: kopf then writes nothing to the CR (no finalizer, no progress
annotations), which keeps deletion free of the operator and a steady state free of writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from h2ogpt_operator.models import GROUP, PLURAL, VERSION
from h2ogpt_operator.naming import MANAGED_BY
from h2ogpt_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

CHILD_RESOURCES = [
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("", "v1", "secrets"),
    ("", "v1", "persistentvolumeclaims"),
    ("", "v1", "pods"),
    ("networking.k8s.io", "v1", "networkpolicies"),
]
OURS: dict[str, Any] = {
    "app.kubernetes.io/managed-by": MANAGED_BY,
    "app.kubernetes.io/instance": kopf.PRESENT,
}


@dataclass
class HandlerContext:
    queue: WorkQueue


def build_registry(context: HandlerContext) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Events are posted by the reconciler itself; kopf must not write anything on its own.
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def on_stack(event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
        key = (namespace or "", name)
        if event.get("type") == "DELETED":
            context.queue.forget(key)
        else:
            context.queue.add(key)

    for group, version, plural in CHILD_RESOURCES:

        @kopf.on.event(group, version, plural, labels=OURS, id=f"child-{plural}", registry=registry)
        def on_child(labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
            context.queue.add((namespace or "", labels["app.kubernetes.io/instance"]))

    return registry
