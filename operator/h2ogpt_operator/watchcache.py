"""What the operator's watches already hold, so a reconcile reads memory instead of the apiserver.

kopf watches the CRs, every labelled child (pods included) and all Secrets anyway, to enqueue
stacks. Its indexes (`@kopf.index`) keep the latest body of each, and kopf runs no handler
until every index has its initial listing: the first key reaches the work queue only when
the indexes are complete. A reconcile gets a `StackView` copied out of the indexes on the
event loop (kopf's indexes are written only there, so the copy is consistent and the worker
thread never reads a dict being changed).

A watch lags our own writes by a few milliseconds to a batching window, so the cache also
remembers what this process wrote: as long as the index still shows exactly the version that a
write replaced (or nothing, for a create), the view shows the written object instead. Once the
watch shows anything else, the watch wins. A stale read can only cause a redundant apply, never
a missed one.

Secrets are held as names, key names and a digest of each key's value: never the values.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

# `kopf.operator(indexers=...)` takes this for embedded operators, but kopf does not re-export the
# class; kopf is pinned in constraints.txt, so the private path is checked on every upgrade.
from kopf._core.engines.indexing import OperatorIndexers

from h2ogpt_operator.models import GROUP, KIND, PLURAL, VERSION
from h2ogpt_operator.naming import MANAGED_BY

Manifest = dict[str, Any]
StackKey = tuple[str, str]  # (namespace, CR name)

# (group, version, plural, kind) of every child kind the reconciler compares, prunes or reads.
CHILD_RESOURCES: list[tuple[str, str, str, str]] = [
    ("apps", "v1", "deployments", "Deployment"),
    ("apps", "v1", "statefulsets", "StatefulSet"),
    ("", "v1", "services", "Service"),
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"),
    # The api pods' identity when they route across inference replicas (builders.build_api_rbac).
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    # The demand Lease the api pods renew when they need more replicas (builders.build_demand_lease).
    ("coordination.k8s.io", "v1", "leases", "Lease"),
]
POD_RESOURCE = ("", "v1", "pods")
SECRET_RESOURCE = ("", "v1", "secrets")
OURS: dict[str, Any] = {
    "app.kubernetes.io/managed-by": MANAGED_BY,
    "app.kubernetes.io/instance": kopf.PRESENT,
}
STACKS_INDEX = "stacks"
PODS_INDEX = "pods"
SECRETS_INDEX = "secrets"


def child_index(plural: str) -> str:
    return f"children-{plural}"


def value_digest(key: str, encoded: str) -> str:
    """sha256 of one Secret key and its (base64) value: a pod template that reads the key carries it
    (inside its checksum), so a new value rolls exactly the pods that read it."""
    return hashlib.sha256(f"{key}={encoded}".encode()).hexdigest()


@dataclass(frozen=True)
class SecretFacts:
    """A Secret without its values: enough to know it exists, which keys it has, and when each changed."""

    name: str
    resource_version: str
    # (key, value_digest(key, value)) sorted by key; never the value. A tuple keeps the facts hashable.
    digests: tuple[tuple[str, str], ...]

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(key for key, _ in self.digests)

    @property
    def key_digests(self) -> dict[str, str]:
        return dict(self.digests)

    @classmethod
    def of(cls, secret: Mapping[str, Any]) -> SecretFacts:
        meta = secret.get("metadata") or {}
        data = secret.get("data") or {}
        digests = tuple((key, value_digest(key, str(value))) for key, value in sorted(data.items()))
        return cls(meta.get("name", ""), meta.get("resourceVersion", ""), digests)


@dataclass(frozen=True)
class StackView:
    """One stack as the watches (and this process's own recent writes) show it."""

    body: Manifest | None
    children: Mapping[tuple[str, str], Manifest] = field(default_factory=dict)  # (kind, name) -> live
    pods: Sequence[Manifest] = ()
    secrets: Mapping[str, SecretFacts] = field(default_factory=dict)  # the namespace's, by name


def resource_version(obj: Mapping[str, Any] | None) -> str | None:
    return None if obj is None else (obj.get("metadata") or {}).get("resourceVersion")


@dataclass
class _Written:
    # The resourceVersions our writes replaced since the watch last caught up (None: the object
    # was absent): two writes in a row before the watch shows the first replace two versions.
    replaced: frozenset[str | None]
    result: Manifest | None  # what the apiserver answered last; None: we deleted it


class WatchCache:
    def __init__(self) -> None:
        self.indexers = OperatorIndexers()
        self._lock = threading.Lock()  # the overlay is written from worker threads, read on the loop
        self._written: dict[StackKey, dict[tuple[str, str], _Written]] = {}

    # --- filled by kopf ---

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """Index handlers: each keeps the latest body (a Secret: its facts) under the stack's key.

        Coroutine functions, so kopf runs them on the event loop rather than handing each watch
        event to its thread pool: they are quick, and the loop is where the index is written.
        """

        @kopf.index(GROUP, VERSION, PLURAL, id=STACKS_INDEX, registry=registry)
        async def stacks(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> Any:
            return {(namespace or "", name): dict(body)}

        for group, version, plural, _kind in CHILD_RESOURCES:

            @kopf.index(group, version, plural, labels=OURS, id=child_index(plural), registry=registry)
            async def child(labels: kopf.Labels, namespace: str | None, body: kopf.Body, **_: Any) -> Any:
                return {(namespace or "", labels["app.kubernetes.io/instance"]): dict(body)}

        @kopf.index(*POD_RESOURCE, labels=OURS, id=PODS_INDEX, registry=registry)
        async def pods(labels: kopf.Labels, namespace: str | None, body: kopf.Body, **_: Any) -> Any:
            return {(namespace or "", labels["app.kubernetes.io/instance"]): dict(body)}

        # Every Secret, not only ours: a stack references the user's own by name.
        @kopf.index(*SECRET_RESOURCE, id=SECRETS_INDEX, registry=registry)
        async def secrets(namespace: str | None, body: kopf.Body, **_: Any) -> Any:
            return {namespace or "": SecretFacts.of(body)}

    # --- this process's writes ---

    def wrote(
        self, stack: StackKey, kind: str, name: str, replaced: str | None, result: Manifest | None
    ) -> None:
        """Remember a write until the watch shows it.

        `replaced`: the resourceVersion the write was based on (None: the object was absent);
        `result`: the apiserver's answer (None: deleted).
        """
        with self._lock:
            written = self._written.setdefault(stack, {})
            before = written.get((kind, name))
            chained = before is not None and replaced == resource_version(before.result)
            versions = (before.replaced if before is not None and chained else frozenset()) | {replaced}
            written[(kind, name)] = _Written(versions, result)

    def echoes_own_write(self, stack: StackKey, kind: str, name: str, watched: Mapping[str, Any]) -> bool:
        """Whether a watch event only shows this process's last write of the object coming back.

        The reconcile that wrote it already worked from that version (the overlay above), so such an
        event has nothing new: enqueueing it would run the stack once more for nothing. Any other
        change (another writer, a controller's status) has another resourceVersion.
        """
        with self._lock:
            entry = self._written.get(stack, {}).get((kind, name))
            return entry is not None and entry.result is not None and (
                resource_version(entry.result) == resource_version(watched)
            )

    def forget(self, stack: StackKey) -> None:
        with self._lock:
            self._written.pop(stack, None)

    def fresh(self, stack: StackKey, kind: str, name: str, watched: Manifest | None) -> Manifest | None:
        """The newer of the watched object and this process's last write of it."""
        with self._lock:
            written = self._written.get(stack, {})
            entry = written.get((kind, name))
            if entry is None:
                return watched
            if resource_version(watched) in entry.replaced:
                return entry.result  # the watch has not caught up with our write yet
            del written[(kind, name)]
            return watched

    # --- read on the event loop ---

    def _store(self, index_id: str, key: Any) -> list[Any]:
        index = self.indexers.indices[index_id]
        return list(index[key]) if key in index else []

    def stack_keys(self) -> list[StackKey]:
        """Every stack the watch has seen (and not seen deleted)."""
        return list(self.indexers.indices[STACKS_INDEX].keys())

    def watched_body(self, namespace: str, name: str) -> Manifest | None:
        """The stack's CR as its watch last delivered it (without this process's pending writes)."""
        found = self._store(STACKS_INDEX, (namespace, name))
        return found[0] if found else None

    def view(self, namespace: str, name: str) -> StackView:
        stack = (namespace, name)
        found = self._store(STACKS_INDEX, stack)
        body = self.fresh(stack, KIND, name, found[0] if found else None)
        children: dict[tuple[str, str], Manifest] = {}
        for _group, _version, plural, kind in CHILD_RESOURCES:
            watched = {item["metadata"]["name"]: item for item in self._store(child_index(plural), stack)}
            with self._lock:
                pending = [n for (k, n) in self._written.get(stack, {}) if k == kind]
            for child_name in set(watched) | set(pending):
                item = self.fresh(stack, kind, child_name, watched.get(child_name))
                if item is not None:
                    children[(kind, child_name)] = {**item, "kind": item.get("kind", kind)}
        secrets = {facts.name: facts for facts in self._store(SECRETS_INDEX, namespace)}
        with self._lock:
            pending_secrets = [n for (k, n) in self._written.get(stack, {}) if k == "Secret"]
        for secret_name in pending_secrets:
            facts = secrets.get(secret_name)
            replaced = {"metadata": {"resourceVersion": facts.resource_version}} if facts else None
            fresh = self.fresh(stack, "Secret", secret_name, replaced)
            if fresh is not replaced:
                if fresh is None:
                    secrets.pop(secret_name, None)
                else:
                    secrets[secret_name] = SecretFacts.of(fresh)
        return StackView(body=body, children=children, pods=self._store(PODS_INDEX, stack), secrets=secrets)
