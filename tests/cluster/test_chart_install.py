"""The Helm chart on the real local control plane (kube-apiserver + controllers + kwok):
server-side dry runs of every ci values file, install --wait, the ServiceAccount's exact
permissions (`kubectl auth can-i`), upgrade with changed values, uninstall without orphans."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hack.localcluster import find_binary
from tests.support.cluster import Cluster, delete_namespace

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "h2ogpt-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRD_NAME = "h2ogptdeployments.h2ogpt.dev"
# Kinds the chart can create, for the orphan check (namespaced ones are listed in all namespaces).
CHART_KINDS = (
    "deployments.apps",
    "services",
    "serviceaccounts",
    "configmaps",
    "pods",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "poddisruptionbudgets.policy",
    "h2ogptdeployments.h2ogpt.dev",
    "servicemonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
)
CLUSTER_KINDS = ("clusterroles.rbac.authorization.k8s.io", "clusterrolebindings.rbac.authorization.k8s.io")


def helm(cluster: Cluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [find_binary("helm"), *args],
        check=False,
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def install_crd(cluster: Cluster) -> None:
    """What `helm install` does with crds/ on first install; idempotent for the session."""
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")


@pytest.fixture
def extra_namespaces(cluster: Cluster) -> Iterator[list[str]]:
    """Two more fresh namespaces, for watchNamespaces."""
    names = [f"w-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        cluster.kubectl("create", "namespace", name)
    try:
        yield names
    finally:
        for name in names:
            delete_namespace(cluster, name)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_ci_values_are_accepted_by_the_apiserver(
    cluster: Cluster, namespace: str, values: Path, prometheus_operator_crds: None
) -> None:
    """Every object, the ServiceMonitor and PrometheusRule included (validated by the Prometheus
    Operator's own CRDs)."""
    install_crd(cluster)
    for watched in yaml.safe_load(values.read_text()).get("watchNamespaces", []):
        cluster.kubectl(
            "apply", "-f", "-", input=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {watched}\n"
        )
    rendered = helm(
        cluster, "template", "ci", str(CHART), "--namespace", namespace, "--values", str(values)
    ).stdout
    manifests = [m for m in yaml.safe_load_all(rendered) if m]
    applied = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(manifests)
    ).stdout
    assert applied.count("(server dry run)") == len(manifests)


def test_schema_of_the_crd_rejects_a_bad_stack_through_the_chart(cluster: Cluster, namespace: str) -> None:
    """The stack section is validated by the CRD at apply time: a GPU engine with no GPU is refused."""
    install_crd(cluster)
    rendered = helm(
        cluster,
        "template",
        "bad",
        str(CHART),
        "--namespace",
        namespace,
        "--show-only",
        "templates/stack.yaml",
        "--set",
        "stack.enabled=true",
        "--set",
        "stack.spec.model.name=org/model",
        "--set",
        "stack.spec.inference.engine=tgi",
        "--set",
        "stack.spec.inference.gpus=0",
    ).stdout
    refused = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert refused.returncode != 0
    assert "inference.gpus must be at least 1" in refused.stderr


def can_i(cluster: Cluster, service_account: str, verb: str, resource: str, *scope: str) -> bool:
    result = cluster.kubectl("auth", "can-i", verb, resource, f"--as={service_account}", *scope, check=False)
    answer = result.stdout.strip()
    assert answer in {"yes", "no"}, result.stderr
    return answer == "yes"


def may_write_service_monitors(cluster: Cluster, service_account: str, namespace: str) -> bool:
    return can_i(cluster, service_account, "create", "servicemonitors.monitoring.coreos.com", "-n", namespace)


def chart_objects(cluster: Cluster, release: str) -> list[str]:
    """Every object labelled with this release, in any namespace."""
    selector = f"app.kubernetes.io/instance={release}"
    found = cluster.kubectl("get", ",".join(CHART_KINDS), "-A", "-l", selector, "-o", "name").stdout.split()
    found += cluster.kubectl("get", ",".join(CLUSTER_KINDS), "-l", selector, "-o", "name").stdout.split()
    return found


def test_install_grants_exactly_what_the_operator_uses_then_upgrades_and_uninstalls_cleanly(
    cluster: Cluster, namespace: str, extra_namespaces: list[str], prometheus_operator_crds: None
) -> None:
    release = f"op-{uuid.uuid4().hex[:6]}"
    sa = f"system:serviceaccount:{namespace}:{release}-h2ogpt-operator"
    other = extra_namespaces[0]

    helm(cluster, "install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s")
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s")
    ready = cluster.kubectl(
        "get",
        "deployment",
        f"{release}-h2ogpt-operator",
        "-n",
        namespace,
        "-o",
        "jsonpath={.status.readyReplicas}",
    ).stdout
    assert ready == "1"

    # Watching every namespace: what the reconcile loop uses, anywhere...
    allowed = [
        ("list", "h2ogptdeployments.h2ogpt.dev", "-A"),
        ("watch", "h2ogptdeployments.h2ogpt.dev", "-A"),
        ("patch", "h2ogptdeployments.h2ogpt.dev", "--subresource=status", "-n", other),
        ("create", "deployments.apps", "-n", other),
        ("delete", "statefulsets.apps", "-n", other),
        ("create", "configmaps", "-n", other),
        ("create", "secrets", "-n", other),
        ("patch", "persistentvolumeclaims", "-n", other),
        ("patch", "services", "-n", other),
        ("delete", "networkpolicies.networking.k8s.io", "-n", other),
        ("watch", "pods", "-A"),
        ("create", "events", "-n", other),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("update", "leases.coordination.k8s.io", "-n", namespace),
        # The api pods' identity for stacks with several inference replicas, and the one rule it grants.
        ("create", "serviceaccounts", "-n", other),
        ("create", "roles.rbac.authorization.k8s.io", "-n", other),
        ("delete", "rolebindings.rbac.authorization.k8s.io", "-n", other),
        ("watch", "endpointslices.discovery.k8s.io", "-n", other),
        # The demand Lease of stacks their autoscaling can grow (server-side apply: patch), and its prune.
        ("patch", "leases.coordination.k8s.io", "-n", other),
        ("delete", "leases.coordination.k8s.io", "-n", other),
        ("watch", "leases.coordination.k8s.io", "-A"),
    ]
    # ...and nothing more.
    denied = [
        ("delete", "nodes"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "namespaces"),
        ("delete", "h2ogptdeployments.h2ogpt.dev", "-n", other),
        ("create", "pods", "-n", other),
        ("create", "pods/exec", "-n", other),
        ("delete", "pods", "-n", other),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("update", "leases.coordination.k8s.io", "-n", other),
        # It writes Roles and binds them only with rules it holds itself: no escalate, no bind, no
        # token for a ServiceAccount, no ClusterRoleBinding, no write to EndpointSlices.
        ("escalate", "roles.rbac.authorization.k8s.io", "-n", other),
        ("bind", "roles.rbac.authorization.k8s.io", "-n", other),
        ("bind", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("create", "serviceaccounts", "--subresource=token", "-n", other),
        ("create", "endpointslices.discovery.k8s.io", "-n", other),
        # Never used (the audit log says so: tests/cluster/test_rbac_least_privilege.py).
        ("update", "h2ogptdeployments.h2ogpt.dev", "-n", other),
        ("patch", "h2ogptdeployments.h2ogpt.dev", "-n", other),
        ("delete", "persistentvolumeclaims", "-n", other),
        ("delete", "configmaps", "-n", other),
        ("delete", "secrets", "-n", other),
        ("get", "pods", "-n", other),
        ("create", "events.events.k8s.io", "-n", other),
        ("get", "leases.coordination.k8s.io", "-n", other),  # only its own, in its namespace
    ]
    assert [c for c in allowed if not can_i(cluster, sa, *c)] == []
    assert [c for c in denied if can_i(cluster, sa, *c)] == []
    assert may_write_service_monitors(cluster, sa, other)

    # Upgrade with changed values: two replicas behind a PDB, scoped to two namespaces, with the
    # ServiceMonitor and PrometheusRule.
    watched = ",".join(extra_namespaces)
    helm(
        cluster,
        "upgrade",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        "120s",
        "--set",
        f"watchNamespaces={{{watched}}}",
        "--set",
        "replicaCount=2",
        "--set",
        "podDisruptionBudget.enabled=true",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
    )
    ready = cluster.kubectl(
        "get",
        "deployment",
        f"{release}-h2ogpt-operator",
        "-n",
        namespace,
        "-o",
        "jsonpath={.status.readyReplicas}",
    ).stdout
    assert ready == "2"
    cluster.kubectl("get", "poddisruptionbudget", f"{release}-h2ogpt-operator", "-n", namespace)
    cluster.kubectl("get", "servicemonitor,prometheusrule", f"{release}-h2ogpt-operator", "-n", namespace)
    # The all-namespaces ClusterRole is gone, not left behind.
    gone = cluster.kubectl("get", "clusterrole", f"{release}-h2ogpt-operator", check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr
    for watched_namespace in extra_namespaces:
        assert can_i(cluster, sa, "list", "secrets", "-n", watched_namespace)
        assert can_i(cluster, sa, "create", "deployments.apps", "-n", watched_namespace)
    assert not can_i(cluster, sa, "list", "secrets", "-A")
    assert not can_i(cluster, sa, "list", "secrets", "-n", "kube-system")
    assert not can_i(cluster, sa, "list", "h2ogptdeployments.h2ogpt.dev", "-A")
    assert not can_i(cluster, sa, "create", "deployments.apps", "-n", "default")
    assert can_i(cluster, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert may_write_service_monitors(cluster, sa, extra_namespaces[0])
    assert not may_write_service_monitors(cluster, sa, "default")

    assert chart_objects(cluster, release)
    helm(cluster, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")
    assert chart_objects(cluster, release) == []
    # Helm keeps crds/ on uninstall by design (deleting it would delete every stack).
    cluster.kubectl("get", "crd", CRD_NAME)


def test_one_install_creates_a_stack_that_uninstall_removes(
    cluster: Cluster, namespace: str, extra_namespaces: list[str], prometheus_operator_crds: None
) -> None:
    release = f"st-{uuid.uuid4().hex[:6]}"
    stack_namespace = extra_namespaces[1]
    helm(
        cluster,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        "120s",
        "--values",
        str(CHART / "ci" / "stack-values.yaml"),
        "--set",
        f"watchNamespaces={{{stack_namespace}}}",
        "--set",
        f"stack.namespace={stack_namespace}",
    )
    stack = yaml.safe_load(
        cluster.kubectl("get", "h2ogpt", "chat", "-n", stack_namespace, "-o", "yaml").stdout
    )
    # The apiserver applied the CRD's defaults: the spec is the CRD's, not free-form.
    assert stack["spec"]["model"]["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert stack["spec"]["inference"]["gpus"] == 1
    assert stack["spec"]["openai"]["enabled"] is True
    env = cluster.kubectl(
        "get",
        "deployment",
        f"{release}-h2ogpt-operator",
        "-n",
        namespace,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[?(@.name=='H2OGPT_OPERATOR_API_IMAGE')].value}",
    )
    assert env.stdout == "ghcr.io/h2ogpt-platform/h2ogpt-api:0.1.0"
    helm(cluster, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")
    assert chart_objects(cluster, release) == []
