"""A thin, typed door to the Kubernetes API for the few kinds the operator touches.

Manifests stay plain dicts end to end (the builders produce them, server-side apply takes them),
so this sends JSON over the kubernetes client's own connection pool with REST paths instead of
the generated per-kind models (whose call signatures changed across client releases).
Every write and every read is counted (metrics, the zero-writes-at-rest guarantee, and the
reads that the watch cache leaves: the Lease, and rare fallbacks).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client, config

from h2ogpt_operator.models import GROUP, PLURAL, VERSION
from h2ogpt_operator.naming import FIELD_MANAGER

Manifest = dict[str, Any]
WriteCounter = Callable[[str, str], None]  # (verb, kind)
ReadCounter = Callable[[str, str], None]  # (verb, kind)

log = logging.getLogger(__name__)

# (apiVersion, kind) -> plural; the REST path follows from the apiVersion.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "customresourcedefinitions",
    (f"{GROUP}/{VERSION}", "H2oGPTDeployment"): PLURAL,
}

SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"


def load_api_client() -> client.ApiClient:
    """KUBECONFIG (or ~/.kube/config) when present, else the in-cluster service account."""
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    configuration = client.Configuration()
    first_file = kubeconfig.split(os.pathsep)[0]
    if Path(first_file).exists():
        config.load_kube_config(config_file=first_file, client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # Reconciles run in a small thread pool; let each keep its own connection.
    configuration.connection_pool_maxsize = 16
    if not configuration.verify_ssl:
        # The kubeconfig asks for it; say so once instead of a warning per request.
        log.warning("TLS verification of the apiserver is off (insecure-skip-tls-verify in the kubeconfig)")
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return client.ApiClient(configuration)


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}" if namespace else base
    path = f"{path}/{PLURALS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


def now_rfc3339(micro: bool = False) -> str:
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if micro else now.strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeError(Exception):
    """A refused request: the HTTP status and the apiserver's Status body."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.body = body

    @property
    def namespace_terminating(self) -> bool:
        return self.status == 403 and "NamespaceTerminating" in self.body


# What a call to the apiserver raises: its refusal (KubeError), or no answer at all: a socket
# error, or urllib3's own timeouts and connection errors, which are not OSErrors.
APISERVER_ERRORS: tuple[type[Exception], ...] = (KubeError, OSError, urllib3.exceptions.HTTPError)


def error_message(exc: KubeError) -> str:
    """The apiserver's own message from a Status body, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or exc.status)


def event_manifest(owner: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> Manifest:
    """A core/v1 Event about `owner`, stamped now (when it happened, not when it is sent)."""
    meta = owner["metadata"]
    now = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class Kube:
    def __init__(
        self,
        api_client: client.ApiClient,
        count_write: WriteCounter | None = None,
        count_read: ReadCounter | None = None,
    ) -> None:
        self.api = api_client
        self._count_write = count_write or (lambda verb, kind: None)
        self._count_read = count_read or (lambda verb, kind: None)

    def _authorization(self) -> str | None:
        """The bearer token, re-read each call (in-cluster tokens rotate; the client's hook refreshes)."""
        configuration = self.api.configuration
        for identifier in ("BearerToken", "authorization"):
            value = configuration.get_api_key_with_prefix(identifier)
            if value:
                return str(value) if str(value).lower().startswith("bearer ") else f"Bearer {value}"
        return None

    def pod_proxy_text(self, namespace: str, pod: str, port: int, path: str, timeout: float = 5.0) -> str:
        """GET `path` on a pod's port through the apiserver's pod proxy (the operator needs no route
        to the pod network, in a cluster or outside one); the answer as text."""
        url = f"{self.api.configuration.host}/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/{path}"
        headers = {"Accept": "text/plain"}
        token = self._authorization()
        if token:
            headers["Authorization"] = token
        self._count_read("get", "pods/proxy")
        response = self.api.rest_client.pool_manager.request(
            "GET", url, headers=headers, timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False
        )
        text = response.data.decode(errors="replace") if response.data else ""
        if response.status >= 400:
            raise KubeError(response.status, response.reason or "", text[:512])
        return text

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        # The client's own connection pool (TLS, client certificates, proxies) with our paths and
        # JSON: the generated per-kind API classes add nothing for plain-dict manifests.
        url = self.api.configuration.host + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = self._authorization()
        if token:
            headers["Authorization"] = token
        response = self.api.rest_client.pool_manager.request(
            method,
            url,
            body=json.dumps(body).encode() if body is not None else None,
            headers=headers,
            timeout=urllib3.Timeout(connect=10, read=60),
            retries=False,
        )
        text = response.data.decode() if response.data else ""
        if response.status >= 400:
            raise KubeError(response.status, response.reason or "", text)
        return json.loads(text) if text else {}

    # --- reads ---

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Manifest | None:
        self._count_read("get", kind)
        try:
            return dict(self._call("GET", resource_path(api_version, kind, namespace, name)))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None, label_selector: str) -> list[Manifest]:
        self._count_read("list", kind)
        result = self._call(
            "GET", resource_path(api_version, kind, namespace), query=[("labelSelector", label_selector)]
        )
        items: list[Manifest] = result.get("items") or []
        for item in items:  # list items omit these; the reconciler keys children by them
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def crd_exists(self, name: str) -> bool:
        self._count_read("get", "CustomResourceDefinition")
        try:
            self._call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- writes ---

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply under the operator's one field manager, taking ownership of conflicts."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        result = self._call(
            "PATCH",
            path,
            body=manifest,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        self._count_write("apply", manifest["kind"])
        return dict(result)

    def create(self, manifest: Manifest) -> Manifest | None:
        """Create; None when it already exists (another writer, or an earlier run, got there first)."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            result = self._call("POST", path, body=manifest, query=[("fieldManager", FIELD_MANAGER)])
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise
        self._count_write("create", manifest["kind"])
        return dict(result)

    def replace(self, manifest: Manifest) -> Manifest | None:
        """PUT with the manifest's resourceVersion; None when someone else changed it first (409)."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        try:
            result = self._call("PUT", path, body=manifest, query=[("fieldManager", FIELD_MANAGER)])
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise
        self._count_write("replace", manifest["kind"])
        return dict(result)

    def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str = "",
    ) -> Manifest:
        path = resource_path(api_version, kind, namespace, name) + (f"/{subresource}" if subresource else "")
        result = self._call(
            "PATCH",
            path,
            body=dict(patch),
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )
        self._count_write("patch", kind)
        return dict(result)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            self._call(
                "DELETE",
                resource_path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            return
        self._count_write("delete", kind)

    def post_event(self, owner: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        """A core/v1 Event on the CR, so `kubectl describe` shows what the operator did."""
        self.post(event_manifest(owner, reason, message, warning))

    def post(self, event: Manifest) -> None:
        """Create an Event; best effort: a refusal or a lost connection is logged, never raised."""
        try:
            self.create(event)
        except APISERVER_ERRORS as exc:  # never fail a reconcile, or stop the event thread, for an Event
            detail = error_message(exc) if isinstance(exc, KubeError) else str(exc)
            log.warning(
                "cannot post event %s on %s: %s", event["reason"], event["involvedObject"]["name"], detail
            )
