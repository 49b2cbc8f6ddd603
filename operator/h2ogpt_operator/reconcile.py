"""One level-based reconcile of one H2oGPTDeployment: desired children, compare, apply, status.

Runs in a worker thread (the kubernetes client is synchronous). It is idempotent: run it twice
on an unchanged cluster and the second run makes no write at all, which is what keeps a
steady-state resync free.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from pydantic import ValidationError

from h2ogpt_operator import builders, naming, status
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.config import OperatorConfig
from h2ogpt_operator.kube import SERVICE_MONITOR_CRD, Kube, KubeError, error_message, now_rfc3339
from h2ogpt_operator.models import GROUP, KIND, VERSION, H2oGPTDeploymentSpec

Manifest = dict[str, Any]
log = logging.getLogger(__name__)

CR_API_VERSION = f"{GROUP}/{VERSION}"
APPLIED_HASH_ANNOTATION = "h2ogpt.dev/applied-hash"
# Kinds the reconciler lists to compare and to prune; the auth Secret is create-once and kept apart.
CHILD_KINDS: list[tuple[str, str]] = [
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
]
SERVICE_MONITOR_KIND = ("monitoring.coreos.com/v1", "ServiceMonitor")
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


def _secret_digest(secret: Mapping[str, Any] | None) -> str:
    if not secret:
        return ""
    data = secret.get("data") or {}
    return hashlib.sha256("\n".join(f"{k}={data[k]}" for k in sorted(data)).encode()).hexdigest()


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
        now: Callable[[], str] = now_rfc3339,
    ) -> None:
        self.kube = kube
        self.config = config
        self.new_token = new_token
        self.now = now

    def reconcile(self, namespace: str, name: str) -> Outcome:
        try:
            return self._reconcile(namespace, name)
        except KubeError as exc:
            if exc.namespace_terminating:  # the namespace is going away, and the stack with it
                return Outcome(exists=False)
            raise

    def _reconcile(self, namespace: str, name: str) -> Outcome:
        body = self.kube.get(CR_API_VERSION, KIND, namespace, name)
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

        auth_digest = self._ensure_auth_secret(body, stack, spec, outcome)
        missing = [
            (path, ref.name)
            for path, ref in builders.referenced_secrets(spec)
            if self.kube.get("v1", "Secret", namespace, ref.name) is None
        ]
        # Listed whenever the API exists, so that turning monitoring off prunes the ServiceMonitor.
        monitor_api = self.kube.crd_exists(SERVICE_MONITOR_CRD)
        monitor_crd = spec.monitoring.service_monitor.enabled and monitor_api

        desired = builders.build_children(stack, spec, self.config, auth_digest)
        if not monitor_crd:
            desired = [child for child in desired if child["kind"] != "ServiceMonitor"]
        for child in desired:
            if not builders.kept_with_cr(child, spec):
                kopf.adopt(child, owner=kopf.Body(cast(kopf.RawBody, body)))
            _stamp(child)

        kinds = CHILD_KINDS + ([SERVICE_MONITOR_KIND] if monitor_api else [])
        live: dict[tuple[str, str], Manifest] = {}
        for api_version, kind in kinds:
            for item in self.kube.list(api_version, kind, namespace, naming.instance_selector(name)):
                live[_key(item)] = item

        current: dict[tuple[str, str], Manifest] = dict(live)
        apply_errors: dict[str, str] = {}
        for child in desired:
            key = _key(child)
            if not needs_apply(child, live.get(key)):
                continue
            try:
                current[key] = self.kube.apply(child)
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
            self.kube.post_event(body, "Applied", "applied " + ", ".join(outcome.applied))
        for message in outcome.errors:
            self.kube.post_event(body, "ApplyFailed", message, warning=True)

        pods = self.kube.list("v1", "Pod", namespace, naming.instance_selector(name))
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
        )
        new_status = status.compute_status(stack, spec, observed, body.get("status"), self.now())
        self._write_status(body, new_status, outcome)
        outcome.ready = status.is_ready(new_status)
        return outcome

    def _ensure_auth_secret(
        self, body: Manifest, stack: Stack, spec: H2oGPTDeploymentSpec, outcome: Outcome
    ) -> str:
        """Create `<cr>-auth` once; add a key a newly enabled feature needs; never rotate one."""
        wanted = builders.build_auth_secret(stack, spec, self.new_token)
        if wanted is None:
            return ""
        secret_name = wanted["metadata"]["name"]
        existing = self.kube.get("v1", "Secret", stack.namespace, secret_name)
        if existing is None:
            kopf.adopt(wanted, owner=kopf.Body(cast(kopf.RawBody, body)))
            created = self.kube.create(wanted)
            if created is not None:
                outcome.writes += 1
                self.kube.post_event(body, "GeneratedSecret", f"generated Secret {secret_name}")
            return _secret_digest(created or self.kube.get("v1", "Secret", stack.namespace, secret_name))
        have = existing.get("data") or {}
        absent = {k: v for k, v in wanted["stringData"].items() if k not in have}
        if absent:
            existing = self.kube.merge_patch(
                "v1", "Secret", stack.namespace, secret_name, {"stringData": absent}
            )
            outcome.writes += 1
            self.kube.post_event(
                body, "GeneratedSecret", f"added {', '.join(sorted(absent))} to Secret {secret_name}"
            )
        return _secret_digest(existing)

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
            self.kube.delete(item["apiVersion"], kind, body["metadata"]["namespace"], child_name)
            outcome.writes += 1
            self.kube.post_event(body, "Deleted", f"deleted {kind}/{child_name}: no longer in the spec")

    def _write_status(self, body: Manifest, new_status: Manifest, outcome: Outcome) -> None:
        current = body.get("status") or {}
        if not status.status_differs(current, new_status):
            return
        patch: dict[str, Any] = dict(new_status)
        # A merge patch keeps keys it does not mention: drop endpoints of disabled components explicitly.
        old_endpoints = current.get("endpoints") or {}
        patch["endpoints"] = {**dict.fromkeys(old_endpoints), **new_status["endpoints"]}
        meta = body["metadata"]
        self.kube.merge_patch(
            CR_API_VERSION, KIND, meta["namespace"], meta["name"], {"status": patch}, subresource="status"
        )
        outcome.writes += 1
        was_ready = status.is_ready(current)
        if status.is_ready(new_status) != was_ready or not current:
            ready = next(c for c in new_status["conditions"] if c["type"] == status.READY)
            self.kube.post_event(
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


def decode_secret_value(secret: Mapping[str, Any], key: str) -> str:
    """A Secret's value as text (tests and the contract check read the generated API key this way)."""
    return base64.b64decode(secret["data"][key]).decode()
