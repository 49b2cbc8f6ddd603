"""One level-based reconcile of one H2oGPTDeployment: desired children, compare, apply, status.

Runs in a worker thread (the kubernetes client is synchronous). It reads nothing from the
apiserver: the CR, its children, pods and Secrets come in a `StackView` copied from the
operator's watches (watchcache.py), and each write is handed back to the cache so the next run
sees it before the watch does. It is idempotent: run it twice on an unchanged cluster and the
second run makes no write and no read at all, which is what keeps a steady-state resync free.
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from pydantic import ValidationError

from h2ogpt_operator import builders, naming, status
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.config import OperatorConfig
from h2ogpt_operator.events import EventSink
from h2ogpt_operator.kube import SERVICE_MONITOR_CRD, Kube, KubeError, error_message, now_rfc3339
from h2ogpt_operator.models import GROUP, KIND, VERSION, H2oGPTDeploymentSpec
from h2ogpt_operator.watchcache import SecretFacts, StackView, WatchCache, resource_version

Manifest = dict[str, Any]
log = logging.getLogger(__name__)

CR_API_VERSION = f"{GROUP}/{VERSION}"
APPLIED_HASH_ANNOTATION = "h2ogpt.dev/applied-hash"
# Whether the ServiceMonitor CRD exists is asked at most this often (one GET for all stacks).
CRD_RECHECK_SECONDS = 60.0
# Never pruned: a PVC holds the model cache or documents; it goes only with the CR (ownership) or by hand.
NEVER_PRUNED = {"PersistentVolumeClaim"}


@dataclass
class Outcome:
    """What one reconcile did and saw."""

    exists: bool = True
    ready: bool = False
    writes: int = 0
    applied: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    missing_secrets: list[str] = field(default_factory=list)  # referenced Secrets that do not exist
    # Every Secret the stack's pods read (present or not): a change to one enqueues the stack.
    secrets_read: list[str] = field(default_factory=list)


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    return builders.settings_checksum(dict(manifest))[:32]


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field we set has the same value in the live object (which also has defaults)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and is_subset(v, live[key]) for key, v in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(map(is_subset, desired, live))
    if isinstance(desired, bool) or isinstance(live, bool):
        return bool(desired == live)
    return bool(desired == live or str(desired) == str(live))  # quantities: 1 vs "1"


def needs_apply(desired: Manifest, live: Manifest | None) -> bool:
    """Apply when absent, when a field we own was edited, or when our desired set changed (a removal)."""
    if live is None:
        return True
    live_hash = (live.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH_ANNOTATION)
    if live_hash != desired["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]:
        return True
    return not is_subset(desired, live)


def _stamp(manifest: Manifest) -> Manifest:
    """Add the applied-hash annotation (over the manifest without it)."""
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations.pop(APPLIED_HASH_ANNOTATION, None)
    annotations[APPLIED_HASH_ANNOTATION] = manifest_hash(manifest)
    return manifest


def _key(manifest: Mapping[str, Any]) -> tuple[str, str]:
    return manifest["kind"], manifest["metadata"]["name"]


def _owned_by(manifest: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in manifest.get("metadata", {}).get("ownerReferences") or [])


def _hold_templates_missing_a_secret(
    desired: Sequence[Manifest],
    live: Mapping[tuple[str, str], Manifest],
    read: Mapping[tuple[str, str], list[tuple[str, str]]],
    digests: builders.SecretDigests,
) -> None:
    """Keep a running workload's checksum while a Secret (or key) its pods read is missing.

    A deleted Secret would otherwise roll the pods into ones that cannot start: a StatefulSet
    replaces its pod before the new one runs, so Weaviate would go down. The running pods keep the
    values they read and the status says what is missing. When the Secret is back, the checksum is
    computed again: the same value gives the held checksum (no roll), a new value rolls the pods.
    A workload not created yet starts with '' for the missing key and rolls when it appears.
    """
    for child in desired:
        key = (child["kind"], child["metadata"]["name"])
        lacking = [pair for pair in read.get(key, []) if pair[1] not in (digests.get(pair[0]) or {})]
        running = live.get(key)
        if not lacking or running is None:
            continue
        held = (
            ((running.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
        ).get(naming.CHECKSUM_ANNOTATION)
        if held:
            child["spec"]["template"]["metadata"]["annotations"][naming.CHECKSUM_ANNOTATION] = held


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        cache: WatchCache,
        *,
        events: EventSink | None = None,
        new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
        now: Callable[[], str] = now_rfc3339,
    ) -> None:
        self.kube = kube
        self.config = config
        self.cache = cache
        # The operator passes an EventRecorder, so a reconcile never waits for an Event to be sent.
        self.events: EventSink = events or kube
        self.new_token = new_token
        self.now = now
        self._crd_lock = threading.Lock()
        self._crd_checked: tuple[float, bool] | None = None

    def service_monitors_served(self) -> bool:
        """Whether the ServiceMonitor CRD exists, asked of the apiserver once a minute for all stacks."""
        with self._crd_lock:
            if self._crd_checked and time.monotonic() - self._crd_checked[0] < CRD_RECHECK_SECONDS:
                return self._crd_checked[1]
            exists = self.kube.crd_exists(SERVICE_MONITOR_CRD)
            self._crd_checked = (time.monotonic(), exists)
            return exists

    def reconcile(self, view: StackView, namespace: str, name: str) -> Outcome:
        try:
            return self._reconcile(view, namespace, name)
        except KubeError as exc:
            if exc.namespace_terminating:  # the namespace is going away, and the stack with it
                return Outcome(exists=False)
            raise

    def _reconcile(self, view: StackView, namespace: str, name: str) -> Outcome:
        body = view.body
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome(exists=False)  # the garbage collector removes the children
        outcome = Outcome()
        try:
            spec = H2oGPTDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            self._write_invalid_status(body, f"spec.{where}: {first['msg']}", outcome)
            return outcome
        stack = Stack(name=name, namespace=namespace)

        secrets = self._secrets_after_ensuring_auth(body, stack, spec, view, outcome)
        missing = [
            (path, ref.name) for path, ref in builders.referenced_secrets(spec) if ref.name not in secrets
        ]
        outcome.missing_secrets = [secret_name for _, secret_name in missing]
        monitor_crd = spec.monitoring.service_monitor.enabled and self.service_monitors_served()

        decided = autoscaled_replicas(body)
        desired = self._desired_children(
            stack, spec, secrets, view, outcome, monitor_crd=monitor_crd, decided=decided
        )
        for child in desired:
            if not builders.kept_with_cr(child, spec):
                kopf.adopt(child, owner=kopf.Body(cast(kopf.RawBody, body)))
            _stamp(child)

        # Every child the watches hold, ServiceMonitors included whatever the spec says now: one
        # made while monitoring was on is pruned when it is turned off.
        live: dict[tuple[str, str], Manifest] = dict(view.children)
        stack_key = (namespace, name)

        current: dict[tuple[str, str], Manifest] = dict(live)
        apply_errors: dict[str, str] = {}
        for child in desired:
            key = _key(child)
            if not needs_apply(child, live.get(key)):
                continue
            try:
                current[key] = self.kube.apply(child)
                self.cache.wrote(stack_key, *key, resource_version(live.get(key)), current[key])
            except KubeError as exc:
                component = child["metadata"]["labels"]["app.kubernetes.io/component"]
                message = f"{child['kind']} {child['metadata']['name']} was refused: {error_message(exc)}"
                apply_errors[component] = message
                outcome.errors.append(message)
                continue
            outcome.writes += 1
            outcome.applied.append(f"{child['kind']}/{child['metadata']['name']}")

        self._prune(body, desired, live, outcome)
        if outcome.applied:
            self.events.post_event(body, "Applied", "applied " + ", ".join(outcome.applied))
        for message in outcome.errors:
            self.events.post_event(body, "ApplyFailed", message, warning=True)

        pods = view.pods
        workloads = {
            naming.INFERENCE: current.get(("Deployment", naming.child_name(name, naming.INFERENCE))),
            naming.WEAVIATE: current.get(("StatefulSet", naming.child_name(name, naming.WEAVIATE))),
            naming.GRADIO: current.get(("Deployment", naming.child_name(name, naming.GRADIO))),
            naming.OPENAI: current.get(("Deployment", naming.child_name(name, naming.OPENAI))),
        }
        observed = status.Observed(
            generation=int(body["metadata"].get("generation", 0)),
            workloads=workloads,
            pods=[p for p in pods if not p["metadata"].get("deletionTimestamp")],
            missing_secrets=missing,
            service_monitor_crd=monitor_crd or not spec.monitoring.service_monitor.enabled,
            apply_errors=apply_errors,
            inference_replicas=builders.inference_replicas(spec, decided),
        )
        new_status = status.compute_status(stack, spec, observed, body.get("status"), self.now())
        self._write_status(body, new_status, outcome)
        outcome.ready = status.is_ready(new_status)
        return outcome

    def _desired_children(
        self,
        stack: Stack,
        spec: H2oGPTDeploymentSpec,
        secrets: Mapping[str, SecretFacts],
        view: StackView,
        outcome: Outcome,
        *,
        monitor_crd: bool,
        decided: int | None,
    ) -> list[Manifest]:
        """The children to apply; records which Secrets their pods read (a change to one enqueues us).
        `decided`: the autoscaler's last decision of the inference replicas (None without autoscaling)."""
        digests = {secret_name: facts.key_digests for secret_name, facts in secrets.items()}
        desired = builders.build_children(stack, spec, self.config, digests, decided)
        if not monitor_crd:
            desired = [child for child in desired if child["kind"] != "ServiceMonitor"]
        read = builders.workload_secrets(desired)
        outcome.secrets_read = sorted({secret_name for pairs in read.values() for secret_name, _ in pairs})
        _hold_templates_missing_a_secret(desired, view.children, read, digests)
        return desired

    def _secrets_after_ensuring_auth(
        self, body: Manifest, stack: Stack, spec: H2oGPTDeploymentSpec, view: StackView, outcome: Outcome
    ) -> dict[str, SecretFacts]:
        """The namespace's Secrets as the watch shows them, with `<cr>-auth` as this run left it."""
        auth_name = naming.child_name(stack.name, naming.AUTH)
        secrets = dict(view.secrets)
        auth_facts = self._ensure_auth_secret(body, stack, spec, secrets.get(auth_name), outcome)
        if auth_facts is not None:
            secrets[auth_name] = auth_facts
        return secrets

    def _ensure_auth_secret(
        self,
        body: Manifest,
        stack: Stack,
        spec: H2oGPTDeploymentSpec,
        existing: SecretFacts | None,
        outcome: Outcome,
    ) -> SecretFacts | None:
        """Create `<cr>-auth` once; add a key a newly enabled feature needs; never rotate one.

        Returns the Secret's facts as this run left it (None: no generated Secret, or none found).
        """
        wanted = builders.build_auth_secret(stack, spec, self.new_token)
        if wanted is None:
            return existing
        secret_name = wanted["metadata"]["name"]
        stack_key = (stack.namespace, stack.name)
        if existing is None:
            kopf.adopt(wanted, owner=kopf.Body(cast(kopf.RawBody, body)))
            created = self.kube.create(wanted)
            if created is not None:
                self.cache.wrote(stack_key, "Secret", secret_name, None, created)
                outcome.writes += 1
                self.events.post_event(body, "GeneratedSecret", f"generated Secret {secret_name}")
                return SecretFacts.of(created)
            # It exists and the watch has not shown it yet (a restart mid-create): ask once.
            found = self.kube.get("v1", "Secret", stack.namespace, secret_name)
            return SecretFacts.of(found) if found else None
        absent = {k: v for k, v in wanted["stringData"].items() if k not in existing.keys}
        if not absent:
            return existing
        patched = self.kube.merge_patch("v1", "Secret", stack.namespace, secret_name, {"stringData": absent})
        self.cache.wrote(stack_key, "Secret", secret_name, existing.resource_version, patched)
        outcome.writes += 1
        self.events.post_event(
            body, "GeneratedSecret", f"added {', '.join(sorted(absent))} to Secret {secret_name}"
        )
        return SecretFacts.of(patched)

    def _prune(
        self,
        body: Manifest,
        desired: Sequence[Manifest],
        live: Mapping[tuple[str, str], Manifest],
        outcome: Outcome,
    ) -> None:
        """Delete children this CR no longer wants (a component disabled), never PVCs."""
        wanted = {_key(child) for child in desired}
        uid = body["metadata"]["uid"]
        for key, item in live.items():
            kind, child_name = key
            if key in wanted or kind in NEVER_PRUNED or not _owned_by(item, uid):
                continue
            namespace = body["metadata"]["namespace"]
            self.kube.delete(item["apiVersion"], kind, namespace, child_name)
            self.cache.wrote(
                (namespace, body["metadata"]["name"]), kind, child_name, resource_version(item), None
            )
            outcome.writes += 1
            self.events.post_event(body, "Deleted", f"deleted {kind}/{child_name}: no longer in the spec")

    def _write_status(self, body: Manifest, new_status: Manifest, outcome: Outcome) -> None:
        current = body.get("status") or {}
        if not status.status_differs(current, new_status):
            return
        patch: dict[str, Any] = dict(new_status)
        # A merge patch keeps keys it does not mention: drop endpoints of disabled components explicitly.
        old_endpoints = current.get("endpoints") or {}
        patch["endpoints"] = {**dict.fromkeys(old_endpoints), **new_status["endpoints"]}
        meta = body["metadata"]
        written = self.kube.merge_patch(
            CR_API_VERSION, KIND, meta["namespace"], meta["name"], {"status": patch}, subresource="status"
        )
        self.cache.wrote(
            (meta["namespace"], meta["name"]), KIND, meta["name"], resource_version(body), written
        )
        outcome.writes += 1
        was_ready = status.is_ready(current)
        if status.is_ready(new_status) != was_ready or not current:
            ready = next(c for c in new_status["conditions"] if c["type"] == status.READY)
            self.events.post_event(
                body,
                "Ready" if ready["status"] == "True" else "NotReady",
                ready["message"],
                warning=ready["status"] != "True",
            )

    def _write_invalid_status(self, body: Manifest, message: str, outcome: Outcome) -> None:
        generation = int(body["metadata"].get("generation", 0))
        previous = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
        before = previous.get(status.READY)
        since = before["lastTransitionTime"] if before and before.get("status") == "False" else self.now()
        new_status = {
            "observedGeneration": generation,
            "conditions": [
                {
                    "type": status.READY,
                    "status": "False",
                    "reason": "InvalidSpec",
                    "message": message,
                    "lastTransitionTime": since,
                    "observedGeneration": generation,
                }
            ],
            "endpoints": {},
        }
        self._write_status(body, new_status, outcome)


def autoscaled_replicas(body: Manifest) -> int | None:
    """The autoscaler's last decision, recorded in the CR's status (None before its first)."""
    decided = ((body.get("status") or {}).get("autoscaling") or {}).get("desiredReplicas")
    return decided if isinstance(decided, int) else None


def decode_secret_value(secret: Mapping[str, Any], key: str) -> str:
    """A Secret's value as text (tests and the contract check read the generated API key this way)."""
    return base64.b64decode(secret["data"][key]).decode()
