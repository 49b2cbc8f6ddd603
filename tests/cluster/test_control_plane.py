"""The local control plane behaves like a real cluster where the operator relies on it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.support.cluster import Cluster, must_get_json

pytestmark = pytest.mark.cluster


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pod_spec(name: str, gpus: int = 0) -> dict:  # type: ignore[type-arg]
    container: dict = {"name": "main", "image": "registry.invalid/never-pulled:1"}  # type: ignore[type-arg]
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container],
                     # kwok's fake nodes carry no taints, but make the intent explicit.
                     "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}]}}


def test_apiserver_reports_its_real_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"].startswith("v1.34."), version
    assert (version["major"], version["minor"]) == ("1", "34")


def test_fake_nodes_are_ready_and_one_offers_gpus(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in must_get_json(cluster, "nodes")["items"]}
    assert set(nodes) >= {"kwok-cpu-0", "kwok-cpu-1", "kwok-gpu-0"}
    for node in nodes.values():
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"
    assert nodes["kwok-gpu-0"]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in nodes["kwok-cpu-0"]["status"]["allocatable"]


def test_deployment_becomes_ready_on_a_fake_node(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "deployment", "web", "--image=registry.invalid/web:1",
                    "--replicas=2")
    cluster.kubectl("-n", namespace, "rollout", "status", "deployment/web", "--timeout=60s", timeout=70)
    deployment = must_get_json(cluster, "-n", namespace, "deployment", "web")
    assert deployment["status"]["readyReplicas"] == 2
    for pod in must_get_json(cluster, "-n", namespace, "pods")["items"]:
        assert pod["spec"]["nodeName"].startswith("kwok-")
        assert pod["status"]["phase"] == "Running"


def test_gpu_pod_lands_only_on_the_gpu_node(cluster: Cluster, namespace: str) -> None:
    for index in range(3):
        manifest = json.dumps(pod_spec(f"gpu-{index}", gpus=2))
        cluster.kubectl("-n", namespace, "apply", "-f", "-", input=manifest)
    for index in range(3):
        cluster.kubectl("-n", namespace, "wait", "--for=condition=Ready", f"pod/gpu-{index}", "--timeout=60s",
                        timeout=70)
        pod = must_get_json(cluster, "-n", namespace, "pod", f"gpu-{index}")
        assert pod["spec"]["nodeName"] == "kwok-gpu-0"


def test_pod_asking_more_gpus_than_any_node_stays_pending(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(pod_spec("greedy", gpus=16)))

    def unschedulable_condition() -> dict | None:  # type: ignore[type-arg]
        pod = must_get_json(cluster, "-n", namespace, "pod", "greedy")
        conditions = pod["status"].get("conditions", [])
        return next((c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    condition = wait_for(unschedulable_condition, what="the scheduler to reject the pod")
    assert isinstance(condition, dict)
    assert condition["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    assert must_get_json(cluster, "-n", namespace, "pod", "greedy")["status"]["phase"] == "Pending"


def test_deleting_an_owner_collects_what_it_owns(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "owner")
    owner_uid = must_get_json(cluster, "-n", namespace, "configmap", "owner")["metadata"]["uid"]
    owned = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "owned", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                              "uid": owner_uid}]}}
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(owned))
    cluster.kubectl("-n", namespace, "delete", "configmap", "owner")

    def owned_is_gone() -> bool:
        result = cluster.kubectl("-n", namespace, "get", "configmap", "owned", check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    wait_for(owned_is_gone, what="the garbage collector to delete the owned ConfigMap")


def test_audit_log_attributes_each_request_to_its_user(cluster: Cluster, namespace: str) -> None:
    # The session cluster writes the audit log (the least-privilege test reads it).
    cluster.kubectl("create", "configmap", "audited-one", "-n", namespace)
    cluster.kubectl("get", "configmap", "audited-one", "-n", namespace)

    def ours() -> list[dict]:  # type: ignore[type-arg]
        events = [json.loads(line) for line in cluster.local.audit_log_path.read_text().splitlines()]
        return [
            e for e in events
            if (e.get("objectRef") or {}).get("name") == "audited-one"
            and e["objectRef"].get("namespace") == namespace
        ]  # fmt: skip

    # Events are written once a request completes: wait for both.
    found: list[dict] = wait_for(lambda: len(ours()) >= 2 and ours(), what="two audit events")  # type: ignore[assignment,type-arg]
    verbs = {(e["verb"], e["user"]["username"], e["responseStatus"]["code"]) for e in found}
    assert ("create", "admin", 201) in verbs
    assert ("get", "admin", 200) in verbs
    assert all(e["level"] == "Metadata" and "requestObject" not in e for e in found)
    assert all(e["userAgent"].startswith("kubectl/") for e in found)
