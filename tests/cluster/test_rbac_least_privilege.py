"""Least privilege, measured: every request the operator made in this session (it always runs as the
chart's ServiceAccount: tests/cluster/operator_harness.py) is read back from the apiserver's audit
log and compared with the chart's ClusterRole and Roles, both ways, for each of the chart's two
modes (all namespaces; watchNamespaces). No request may have been refused, and no granted
(apiGroup, resource, verb) may go unused.

The test drives one stack through every path that needs a permission (so it holds when run alone);
in a full run the log also holds the requests of every other cluster test module.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.cluster.operator_harness import (
    ALL_NAMESPACES_RELEASE,
    NAMESPACED_RELEASE,
    OperatorProcess,
    audit_events,
    get_json_or_none,
    install_crd,
    items,
    operator_user,
    provide_volumes,
    remove_volumes,
    render_chart_rbac,
    wait_for,
    wait_ready,
)
from tests.support.cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

INSTANCE = "app.kubernetes.io/instance"
Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)
# Granted, yet no request of its own: the OwnerReferencesPermissionEnforcement admission plugin (on in
# the local apiserver, as on OpenShift) checks it when a child is created with an ownerReference that
# blocks the owner's deletion (kopf.adopt sets blockOwnerDeletion). Without it every adopted child is
# refused, which the other cluster tests would show.
CHECKED_IN_ADMISSION: set[Permission] = {("h2ogpt.dev", "h2ogptdeployments/finalizers", "update")}
# Granted for a path the tests cannot provoke on purpose: the generated auth Secret's create answers
# "already exists" before the watch shows the Secret (an operator restarted mid-create), and the
# operator reads it once (reconcile.Reconciler._ensure_auth_secret).
RARE_PATHS: set[Permission] = {("", "secrets", "get")}
# Granted for a scale-in while requests stream (the autoscaler marks the idle inference pods), which
# needs API pods whose /metrics answer: kwok pods answer nothing. tests/cluster/test_autoscaling.py
# takes that path with the chart's ServiceAccount's credentials, so a grant missing fails there.
NEEDS_ANSWERING_API_PODS: set[Permission] = {("", "pods", "patch")}
# Granted, never used by the operator itself: it gives the api pods of a stack with several inference
# replicas a Role with exactly these rules (builders.ENDPOINTSLICE_READER_RULES), and the apiserver
# lets it write that Role and its RoleBinding only because it holds them (RBAC's escalation check).
# Holding three read verbs is less than `escalate` or `bind`, which would let it grant anything.
HELD_TO_GRANT: set[Permission] = {
    ("discovery.k8s.io", "endpointslices", verb) for verb in ("get", "list", "watch")
}


def granted_permissions(release: str, watch_namespaces: list[str]) -> set[Permission]:
    """What the chart grants the operator (ClusterRoles, Roles) in one mode, whatever the namespace."""
    granted: set[Permission] = set()
    for manifest in render_chart_rbac(release, watch_namespaces):
        if manifest["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in manifest["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted |= {(group, resource, verb) for verb in rule["verbs"]}
    return granted


def permissions(event: dict[str, Any]) -> set[Permission]:
    """The RBAC permissions a request needed; none for non-resource URLs (discovery: /api, /apis, /version).

    A server-side apply that creates its object (answered 201) is authorized as `patch` and then,
    inside the apiserver, as `create`: that second check is no request of its own in the log.
    """
    ref = event.get("objectRef")
    if not ref or "resource" not in ref:
        return set()
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    group = ref.get("apiGroup", "")
    needed = {(group, resource, event["verb"])}
    if event["verb"] == "patch" and event.get("responseStatus", {}).get("code") == 201:
        needed.add((group, resource, "create"))
    return needed


def describe(event: dict[str, Any]) -> str:
    return f"{event['verb']} {event['requestURI']} -> {event.get('responseStatus', {}).get('code')}"


def stack(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "h2ogpt.dev/v1alpha1",
        "kind": "H2oGPTDeployment",
        "metadata": {"name": "least"},
        "spec": {"model": {"name": "org/model"}, **spec},
    }


@pytest.mark.parametrize("mode", ["all-namespaces", "watch-namespaces"])
def test_the_operator_uses_every_permission_the_chart_grants_and_no_other(
    cluster: Cluster,
    namespace: str,
    prometheus_operator_crds: None,
    tmp_path_factory: pytest.TempPathFactory,
    mode: str,
) -> None:
    install_crd(cluster)
    tag = uuid.uuid4().hex[:6]
    provide_volumes(cluster, 2, tag)
    watched = [namespace] if mode == "watch-namespaces" else []
    release = NAMESPACED_RELEASE if watched else ALL_NAMESPACES_RELEASE
    args = [arg for watched_namespace in watched for arg in ("--namespace", watched_namespace)]
    args += ["--autoscale-interval-seconds", "1"]
    operator = OperatorProcess(cluster, tmp_path_factory.mktemp("rbac"), f"h2ogpt-rbac-{tag}", *args)
    operator.start()

    def apply(manifest: dict[str, Any]) -> None:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    try:
        wait_for(operator.is_leader, 30, "the operator to take the Lease")
        # 1. Everything on, but no Weaviate yet: the generated Secret holds only the API key.
        monitored = {"serviceMonitor": {"enabled": True}}
        apply(stack(retrieval={"enabled": False}, monitoring=monitored))
        wait_ready(cluster, namespace, "least", timeout=90)
        assert get_json_or_none(cluster, "servicemonitor", "least-metrics", "-n", namespace) is not None
        # 2. Weaviate on: its key is added to the existing Secret (a patch, never a new Secret).
        # Autoscaling on: the operator reads the API pods' metrics through the pod proxy (kwok pods
        # answer nothing, so the decision records that and keeps the count).
        # maxReplicas 2: several inference replicas, so the api pods get their ServiceAccount, Role
        # and RoleBinding (created by server-side apply, which the Role's escalation check allows).
        # minReplicas 0: the stack can scale to zero, so it gets its demand Lease, which the api
        # pods' Role may renew (kwok pods hold no request, so nobody does here).
        apply(stack(monitoring=monitored, inference={"autoscaling": {"minReplicas": 0, "maxReplicas": 2}}))
        wait_ready(cluster, namespace, "least", timeout=90)
        routed = items(cluster, "serviceaccounts,roles,rolebindings,leases", namespace, f"{INSTANCE}=least")
        assert sorted(f"{i['kind']}/{i['metadata']['name']}" for i in routed) == [
            "Lease/least-demand",
            "Role/least-api",
            "RoleBinding/least-api",
            "ServiceAccount/least-api",
        ]

        def autoscaled() -> bool:
            found = get_json_or_none(cluster, "h2ogpt", "least", "-n", namespace) or {}
            return "autoscaling" in (found.get("status") or {})

        wait_for(autoscaled, 60, "the autoscaler's first decision in status.autoscaling")
        # 3. Components off: their children are pruned (deleted) one kind each; an external engine
        # has no inference replicas to route across or scale, so the api pods' identity and the
        # demand Lease go too.
        apply(
            stack(
                retrieval={"enabled": False},
                frontend={"enabled": False},
                networkPolicy={"enabled": False},
                inference={"engine": "external", "external": {"url": "http://upstream:8000/v1"}},
            )
        )

        def pruned() -> bool:
            found = items(cluster, "deployments,statefulsets,networkpolicies,servicemonitors,serviceaccounts,"
                          "roles,rolebindings,leases", namespace, f"{INSTANCE}=least")  # fmt: skip
            seen[:] = sorted(f"{i['kind']}/{i['metadata']['name']}" for i in found)
            return seen == ["Deployment/least-openai"]

        seen: list[str] = []
        try:
            wait_for(pruned, 60, "the disabled components' children to be deleted")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still there: {seen}") from None
        wait_ready(cluster, namespace, "least", timeout=60)
    finally:
        operator.stop()
        remove_volumes(cluster, tag)

    user = operator_user(release)
    requests = audit_events(cluster, {user})
    assert requests, f"no request by {user} in the audit log"
    refused = [
        describe(e) for e in requests if e["annotations"].get("authorization.k8s.io/decision") != "allow"
    ]
    assert not refused, f"requests the chart does not grant: {refused}"
    used = set().union(*map(permissions, requests))
    granted = granted_permissions(release, watched)
    assert not used - granted, f"used but not granted: {sorted(used - granted)}"
    # The figures docs/security.md quotes (pytest -s shows them).
    print(f"operator requests: {len(requests)}; permissions used: {len(used)}; granted: {len(granted)}")
    assert not used & HELD_TO_GRANT, f"held only to be granted, yet used: {sorted(used & HELD_TO_GRANT)}"
    unused = granted - used - CHECKED_IN_ADMISSION - RARE_PATHS - NEEDS_ANSWERING_API_PODS - HELD_TO_GRANT
    assert not unused, f"granted but never used: {sorted(unused)}; used: {sorted(used)}"
