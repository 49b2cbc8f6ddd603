"""Operator processes come and go: leader election, and a kill in the middle of a reconcile."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.cluster.operator_harness import (
    OperatorProcess,
    get_json_or_none,
    install_crd,
    items,
    provide_volumes,
    remove_volumes,
    wait_for,
    wait_ready,
)
from tests.support.cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

INSTANCE = "app.kubernetes.io/instance"


@pytest.fixture(scope="module")
def volumes(cluster: Cluster) -> Iterator[None]:
    install_crd(cluster)
    tag = uuid.uuid4().hex[:6]
    provide_volumes(cluster, 12, tag)
    yield
    remove_volumes(cluster, tag)


def stack(name: str) -> str:
    return json.dumps({
        "apiVersion": "h2ogpt.dev/v1alpha1", "kind": "H2oGPTDeployment", "metadata": {"name": name},
        "spec": {"model": {"name": "org/model"}},
    })  # fmt: skip


def test_two_operators_only_the_leader_acts(
    cluster: Cluster, namespace: str, volumes: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lease = f"h2ogpt-operator-{uuid.uuid4().hex[:6]}"
    logs = tmp_path_factory.mktemp("two-operators")
    first = OperatorProcess(cluster, logs, lease, "--namespace", namespace)
    second = OperatorProcess(cluster, logs, lease, "--namespace", namespace)
    first.start()
    second.start()
    try:
        leader = wait_for(lambda: [op for op in (first, second) if op.is_leader()], 30, "a leader")
        assert len(leader) == 1
        acting, standby = leader[0], (second if leader[0] is first else first)

        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack("duo"))
        wait_ready(cluster, namespace, "duo")
        assert stack_writes(acting) > 0
        # Every replica applies the CRD once at start (idempotent, before the election); only the
        # leader writes anything of a stack.
        assert stack_writes(standby) == 0
        assert standby.metric_sum("h2ogpt_operator_reconciles_total") == 0

        # The leader dies without releasing the Lease: the standby takes over once it expires.
        acting.stop(kill=True)
        wait_for(standby.is_leader, 20, "the standby to take the Lease")
        cluster.kubectl("delete", "deployment", "duo-openai", "-n", namespace, "--wait=false")
        wait_for(
            lambda: get_json_or_none(cluster, "deployment", "duo-openai", "-n", namespace),
            15,
            "the new leader to restore the Deployment",
        )
        assert stack_writes(standby) > 0
    finally:
        first.stop()
        second.stop()


def stack_writes(operator: OperatorProcess) -> float:
    """Writes the operator sent to the apiserver, its own CRD's apply at start left out."""
    return sum(
        value
        for key, value in operator.metrics().items()
        if key.startswith("h2ogpt_operator_api_writes_total") and 'kind="CustomResourceDefinition"' not in key
    )


def test_killed_mid_reconcile_converges_without_duplicates(
    cluster: Cluster, namespace: str, volumes: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lease = f"h2ogpt-operator-{uuid.uuid4().hex[:6]}"
    operator = OperatorProcess(cluster, tmp_path_factory.mktemp("killed"), lease, "--namespace", namespace)
    operator.start()
    try:
        wait_for(operator.is_leader, 30, "the Lease")
        names = ["k1", "k2", "k3"]
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(stack(n) for n in names))
        # Kill it as soon as it has started writing children, before the stacks are complete.
        wait_for(
            lambda: items(cluster, "configmaps", namespace, f"{INSTANCE}=k1"),
            20,
            "a first child",
            interval=0.05,
        )
        operator.stop(kill=True)
        first_keys = {
            n: (get_json_or_none(cluster, "secret", f"{n}-auth", "-n", namespace) or {}).get("data")
            for n in names
        }

        operator.start()  # the same identity: it resumes its own Lease at once
        for name in names:
            wait_ready(cluster, namespace, name)
        for name in names:
            for kind, expected in [
                ("deployments", 3),
                ("statefulsets", 1),
                ("services", 5),
                ("configmaps", 1),
                ("secrets", 1),
                ("pvc", 2),
            ]:
                found = items(cluster, kind, namespace, f"{INSTANCE}={name}")
                if kind == "pvc":
                    found = [p for p in items(cluster, "pvc", namespace) if name in p["metadata"]["name"]]
                assert len(found) == expected, f"{name}: {kind} {[f['metadata']['name'] for f in found]}"
            pods = items(cluster, "pods", namespace, f"{INSTANCE}={name}")
            assert len([p for p in pods if not p["metadata"].get("deletionTimestamp")]) == 4
            # A key generated before the kill is kept, never regenerated.
            if first_keys[name]:
                secret = get_json_or_none(cluster, "secret", f"{name}-auth", "-n", namespace)
                assert secret is not None
                assert secret["data"] == first_keys[name]
    finally:
        operator.stop()


def _resource_versions(cluster: Cluster, namespace: str) -> dict[str, str]:
    """resourceVersion of every object in the namespace a reconcile could write (events included)."""
    versions = {}
    for kind in [
        "h2ogpt",
        "deployments",
        "statefulsets",
        "services",
        "configmaps",
        "secrets",
        "pvc",
        "events",
    ]:
        for obj in items(cluster, kind, namespace):
            versions[f"{obj['kind']}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return versions


def _writes(operator: OperatorProcess) -> dict[str, float]:
    """Writes for the stacks; the leader's Lease renewals (one per lease/3 seconds) are not theirs."""
    return {
        k: v
        for k, v in operator.metrics().items()
        if k.startswith("h2ogpt_operator_api_writes_total") and 'kind="Lease"' not in k
    }


def test_steady_state_resync_makes_zero_writes(
    cluster: Cluster, namespace: str, volumes: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    lease = f"h2ogpt-operator-{uuid.uuid4().hex[:6]}"
    operator = OperatorProcess(cluster, tmp_path_factory.mktemp("calm"), lease, "--namespace", namespace)
    operator.start()
    try:
        wait_for(operator.is_leader, 30, "the Lease")
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack("calm"))
        wait_ready(cluster, namespace, "calm")
        # Settled: the pods' own status updates (kwok marks them ready in steps) have been reconciled.
        wait_for(
            lambda: all(p["status"].get("phase") == "Running" for p in items(cluster, "pods", namespace)),
            20,
            "all pods Running",
        )
        writes = _writes(operator)
        versions = _resource_versions(cluster, namespace)
        reconciles = operator.metric_sum("h2ogpt_operator_reconciles_total")
        # Three resync periods (3 s each) pass, shown by the reconcile counter rather than assumed.
        wait_for(
            lambda: operator.metric_sum("h2ogpt_operator_reconciles_total") >= reconciles + 3,
            20,
            "three more reconciles",
        )
        assert _writes(operator) == writes
        assert _resource_versions(cluster, namespace) == versions
    finally:
        operator.stop()
