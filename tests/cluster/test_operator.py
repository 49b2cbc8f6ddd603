"""The operator against the real local control plane: one operator process for the whole module."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.operator_harness import (
    OperatorProcess,
    apply_manifest,
    condition,
    get_json_or_none,
    items,
    must_get_json,
    running_operator,
    sample,
    wait_for,
    wait_ready,
)
from tests.support.cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

INSTANCE = "app.kubernetes.io/instance"


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster, tmp_path_factory.mktemp("operator"), "h2ogpt-operator", 24) as process:
        yield process


def small_stack(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "h2ogpt.dev/v1alpha1",
        "kind": "H2oGPTDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"name": "org/model"}, **spec},
    }



def wait_for_inference_roll(
    cluster: Cluster, namespace: str, name: str, before: dict[str, set[str]]
) -> dict[str, set[str]]:
    """The pods by component once the inference pods have been replaced."""

    def rolled() -> dict[str, set[str]] | None:
        pods = pods_by_component(cluster, namespace, name)
        if pods.get("inference") and pods["inference"] != before["inference"]:
            return pods
        return None

    return wait_for(rolled, 30, "the inference pods to roll")


def pods_by_component(cluster: Cluster, namespace: str, name: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pod in items(cluster, "pods", namespace, f"{INSTANCE}={name}"):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        found.setdefault(component, set()).add(pod["metadata"]["uid"])
    return found


# --- the schema --------------------------------------------------------------------------------------------


def test_resource_quantities_are_read_as_kubernetes_reads_them(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Every form a pod's resources take passes the CRD's schema (the apiserver's own RE2 check)."""
    resources = {"requests": {"cpu": ".5", "memory": "1e9"}, "limits": {"cpu": "+2", "memory": "1.5Gi"}}
    manifest = {
        "apiVersion": "h2ogpt.dev/v1alpha1",
        "kind": "H2oGPTDeployment",
        "metadata": {"name": "quantities"},
        "spec": {"model": {"name": "m"}, "inference": {"engine": "llamacpp", "resources": resources}},
    }
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": {"name": "m"}, "inference": {"engine": "llama"}}, 'Unsupported value: "llama"'),
        ({"model": {"name": "m"}, "openai": {"replicas": -1}}, "should be greater than or equal to 0"),
        (
            {"model": {"name": "m"}, "inference": {"engine": "external", "gpus": 0}},
            "inference.external.url is required when inference.engine is external",
        ),
        ({"model": {"name": "m"}, "inference": {"gpus": 0}}, "inference.gpus must be at least 1"),
        (
            {"model": {"name": "m"}, "inference": {"engine": "vllm", "gpus": 0}},
            "inference.gpus must be at least 1",
        ),
        (
            {"model": {"name": "m"}, "retrieval": {"embedding": {"model": "BAAI/bge-small-en-v1.5"}}},
            "retrieval.embedding.server is required",
        ),
        ({"inference": {}}, "spec.model: Required value"),
        (
            {"model": {"name": "m"}, "inference": {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}},
            "inference.autoscaling.minReplicas must not be above maxReplicas",
        ),
        (
            {
                "model": {"name": "m"},
                "inference": {"engine": "external", "external": {"url": "http://x"},
                              "autoscaling": {"maxReplicas": 2}},
            },
            "inference.autoscaling needs an engine the operator runs",
        ),
        (
            {"model": {"name": "m"},
             "inference": {"engine": "llamacpp", "autoscaling": {"maxReplicas": 2, "targetQueueSize": 4}}},
            "targetQueueSize needs an engine that exports its queue",
        ),
        (
            {"model": {"name": "m"}, "inference": {"autoscaling": {"minReplicas": 0}}},
            "maxReplicas: Required value",
        ),
        (
            {"model": {"name": "m"}, "openai": {"workers": 2}, "auth": {"limits": {"tokensPerMinute": 1000}}},
            "openai.workers above 1 cannot be combined with auth.limits",
        ),
        (
            {"model": {"name": "m"}, "inference": {"resources": {"limits": {"memory": "1 Gi"}}}},
            "spec.inference.resources.limits.memory: Invalid value",
        ),
        (
            {"model": {"name": "m"}, "inference": {"resources": {"requests": {"cpu": -1}}}},
            "spec.inference.resources.requests.cpu: Invalid value",
        ),
    ],
)
def test_invalid_crs_are_refused_by_kubectl_apply(
    cluster: Cluster, namespace: str, operator: OperatorProcess, spec: dict[str, Any], message: str
) -> None:
    manifest = {
        "apiVersion": "h2ogpt.dev/v1alpha1",
        "kind": "H2oGPTDeployment",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    result = apply_manifest(cluster, namespace, manifest, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert items(cluster, "h2ogpt", namespace) == []
    assert items(cluster, "all", namespace, f"{INSTANCE}=bad") == []


def test_weaviate_replicas_cannot_be_lowered(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Collections keep the replication factor they were made with: fewer pods would lose quorum, or
    the shards placed on the removed pods."""
    manifest = {
        "apiVersion": "h2ogpt.dev/v1alpha1",
        "kind": "H2oGPTDeployment",
        "metadata": {"name": "replicated"},
        "spec": {"model": {"name": "m"}, "inference": {"engine": "llamacpp"}, "retrieval": {"replicas": 3}},
    }
    apply_manifest(cluster, namespace, manifest)
    try:
        manifest["spec"]["retrieval"]["replicas"] = 2
        lowered = apply_manifest(cluster, namespace, manifest, check=False)
        assert lowered.returncode != 0
        assert "retrieval.replicas cannot be lowered" in lowered.stderr
        manifest["spec"]["retrieval"]["replicas"] = 4
        apply_manifest(cluster, namespace, manifest)
        cr = must_get_json(cluster, "h2ogpt", "replicated", "-n", namespace)
        assert cr["spec"]["retrieval"]["replicas"] == 4
    finally:
        cluster.kubectl("delete", "h2ogpt", "replicated", "-n", namespace, "--wait=false", check=False)


# --- the samples -------------------------------------------------------------------------------------------


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref["uid"] == uid for ref in obj["metadata"].get("ownerReferences") or [])


def test_tgi_sample_builds_a_wired_stack_on_the_gpu_node(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    manifest = sample("tgi-gpu")
    name = manifest["metadata"]["name"]
    started = time.monotonic()
    apply_manifest(cluster, namespace, manifest)
    cr = wait_ready(cluster, namespace, name)
    print(f"tgi sample Ready after {time.monotonic() - started:.1f}s")
    uid = cr["metadata"]["uid"]

    assert cr["status"]["endpoints"] == {
        "openai": f"http://{name}-openai.{namespace}.svc:5000/v1",
        "gradio": f"http://{name}-gradio.{namespace}.svc:7860",
    }
    for kind, child in [
        ("deployment", "inference"), ("deployment", "openai"), ("deployment", "gradio"),
        ("statefulset", "weaviate"), ("service", "inference"), ("service", "weaviate"),
        ("service", "weaviate-headless"), ("service", "openai"), ("service", "gradio"),
        ("configmap", "config"), ("secret", "auth"),
    ]:  # fmt: skip
        obj = get_json_or_none(cluster, kind, f"{name}-{child}", "-n", namespace)
        assert obj is not None, f"{kind} {name}-{child} missing"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "h2ogpt-operator"
        assert _owned_by(obj, uid), f"{kind} {name}-{child} is not owned by the CR"
    openai_deployment = must_get_json(
        cluster, "deployment", f"{name}-openai", "-n", namespace, "--show-managed-fields"
    )
    fields = openai_deployment["metadata"]["managedFields"]
    managers = {m["manager"] for m in fields if m["operation"] == "Apply"}
    assert managers == {"h2ogpt-operator"}

    cache = get_json_or_none(cluster, "pvc", f"{name}-model-cache", "-n", namespace)
    assert cache is not None
    assert not cache["metadata"].get("ownerReferences"), "the model cache must outlive the CR"
    if cluster.local.real_node:  # as root (make test): the real node brings the default StorageClass
        # ...whose provisioner bound it (before the local cluster had one, it stayed Pending).
        assert cache["status"]["phase"] == "Bound"
        assert cache["spec"]["storageClassName"] == "local-path"

    config = get_json_or_none(cluster, "configmap", f"{name}-config", "-n", namespace)
    assert config is not None
    assert config["data"]["H2OGPT_INFERENCE_SERVER"] == f"http://{name}-inference.{namespace}.svc:80"
    assert config["data"]["H2OGPT_BASE_MODEL"] == manifest["spec"]["model"]["name"]
    secret = get_json_or_none(cluster, "secret", f"{name}-auth", "-n", namespace)
    assert secret is not None
    assert set(secret["data"]) == {"H2OGPT_H2OGPT_API_KEYS", "WEAVIATE_API_KEY"}
    assert not set(secret["data"]) & set(config["data"])

    inference_pods = items(
        cluster, "pods", namespace, f"{INSTANCE}={name},app.kubernetes.io/component=inference"
    )
    assert len(inference_pods) == 1
    gpu_pod = inference_pods[0]
    assert gpu_pod["spec"]["nodeName"] == "kwok-gpu-0"
    assert gpu_pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    table = cluster.kubectl("get", "h2ogpt", name, "-n", namespace).stdout
    assert "True" in table
    assert "tgi" in table
    assert f"http://{name}-openai.{namespace}.svc:5000/v1" in table


def test_vllm_sample(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    manifest = sample("vllm")
    name = manifest["metadata"]["name"]
    apply_manifest(cluster, namespace, manifest)
    wait_ready(cluster, namespace, name)
    config = get_json_or_none(cluster, "configmap", f"{name}-config", "-n", namespace)
    assert config is not None
    assert config["data"]["H2OGPT_INFERENCE_SERVER"] == f"vllm:{name}-inference.{namespace}.svc:8000"
    # The frontend is disabled.
    assert get_json_or_none(cluster, "deployment", f"{name}-gradio", "-n", namespace) is None
    pods = items(cluster, "pods", namespace, f"{INSTANCE}={name},app.kubernetes.io/component=inference")
    assert [p["spec"]["nodeName"] for p in pods] == ["kwok-gpu-0"]
    assert pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert (
        len(items(cluster, "pods", namespace, f"{INSTANCE}={name},app.kubernetes.io/component=openai")) == 2
    )


def test_llamacpp_sample_runs_on_cpu_under_restricted_pod_security(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """No GPU, no model cache, and every pod admitted where `restricted` is enforced."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    manifest = sample("llamacpp-cpu")
    name = manifest["metadata"]["name"]
    apply_manifest(cluster, namespace, manifest)
    wait_ready(cluster, namespace, name)
    config = must_get_json(cluster, "configmap", f"{name}-config", "-n", namespace)
    inference_url = f"http://{name}-inference.{namespace}.svc:8000/v1"
    assert config["data"]["H2OGPT_INFERENCE_SERVER"] == f"openai:{inference_url}"
    assert get_json_or_none(cluster, "pvc", f"{name}-model-cache", "-n", namespace) is None
    pods = items(cluster, "pods", namespace, f"{INSTANCE}={name}")
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods}
    assert components == {"inference", "weaviate", "openai", "gradio"}
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in pod["spec"]["containers"]:
            assert not any("gpu" in key for key in (container.get("resources") or {}).get("limits", {}))


def test_external_sample_waits_for_its_secret(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    manifest = sample("external-openai")
    name = manifest["metadata"]["name"]
    apply_manifest(cluster, namespace, manifest)

    def secret_missing() -> dict[str, Any] | None:
        cond = condition(get_json_or_none(cluster, "h2ogpt", name, "-n", namespace), "OpenAIReady")
        return cond if cond and cond["reason"] == "SecretMissing" else None

    cond = wait_for(secret_missing, 30, "OpenAIReady=SecretMissing")
    assert "Secret 'upstream-openai' (spec.inference.external.apiKeySecretRef) not found" in cond["message"]
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "upstream-openai",
        "-n",
        namespace,
        "--from-literal=OPENAI_API_KEY=sk-test",
    )
    wait_ready(cluster, namespace, name)
    assert get_json_or_none(cluster, "deployment", f"{name}-inference", "-n", namespace) is None
    config = get_json_or_none(cluster, "configmap", f"{name}-config", "-n", namespace)
    assert config is not None
    assert config["data"]["H2OGPT_INFERENCE_SERVER"] == "openai:https://api.openai.com/v1"
    assert "sk-test" not in json.dumps(get_json_or_none(cluster, "h2ogpt", name, "-n", namespace))


def test_too_many_gpus_are_reported(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    apply_manifest(cluster, namespace, small_stack("greedy", inference={"gpus": 16}))

    def unschedulable() -> dict[str, Any] | None:
        cond = condition(get_json_or_none(cluster, "h2ogpt", "greedy", "-n", namespace), "Ready")
        return cond if cond and cond["reason"] == "Unschedulable" else None

    cond = wait_for(unschedulable, 45, "Ready=False/Unschedulable")
    assert cond["status"] == "False"
    assert "16 nvidia.com/gpu" in cond["message"]
    assert "Insufficient nvidia.com/gpu" in cond["message"]


# --- level-based behaviour ---------------------------------------------------------------------------------


def test_deleted_or_edited_children_are_restored(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_manifest(cluster, namespace, small_stack("heal"))
    wait_ready(cluster, namespace, "heal")
    old_uid = must_get_json(cluster, "deployment", "heal-openai", "-n", namespace)["metadata"]["uid"]

    started = time.monotonic()
    cluster.kubectl("delete", "deployment", "heal-openai", "-n", namespace, "--wait=false")

    def recreated() -> bool:
        obj = get_json_or_none(cluster, "deployment", "heal-openai", "-n", namespace)
        return bool(obj and obj["metadata"]["uid"] != old_uid)

    wait_for(recreated, 15, "the deleted Deployment to come back")
    print(f"deleted Deployment restored in {time.monotonic() - started:.1f}s")

    started = time.monotonic()
    cluster.kubectl(
        "patch",
        "configmap",
        "heal-config",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"data": {"H2OGPT_BASE_MODEL": "hand/edited"}}),
    )
    cluster.kubectl("scale", "deployment", "heal-gradio", "-n", namespace, "--replicas=3")

    def healed() -> bool:
        config = get_json_or_none(cluster, "configmap", "heal-config", "-n", namespace)
        gradio = get_json_or_none(cluster, "deployment", "heal-gradio", "-n", namespace)
        return bool(
            config
            and gradio
            and config["data"]["H2OGPT_BASE_MODEL"] == "org/model"
            and gradio["spec"]["replicas"] == 1
        )

    wait_for(healed, 15, "the edited ConfigMap and Deployment to be restored")
    print(f"edited children restored in {time.monotonic() - started:.1f}s")


def test_spec_change_rolls_only_the_pods_that_consume_it(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_manifest(cluster, namespace, small_stack("roll"))
    wait_ready(cluster, namespace, "roll")
    before = pods_by_component(cluster, namespace, "roll")

    # An inference-only setting: only the inference pods roll; the ConfigMap does not change.
    config_before = must_get_json(cluster, "configmap", "roll-config", "-n", namespace)
    cluster.kubectl(
        "patch",
        "h2ogpt",
        "roll",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"inference": {"quantize": "awq"}}}),
    )
    wait_ready(cluster, namespace, "roll")
    after = wait_for_inference_roll(cluster, namespace, "roll", before)
    assert after["weaviate"] == before["weaviate"]
    assert after["openai"] == before["openai"]
    assert after["gradio"] == before["gradio"]
    config_after = must_get_json(cluster, "configmap", "roll-config", "-n", namespace)
    assert config_after["metadata"]["resourceVersion"] == config_before["metadata"]["resourceVersion"]

    # The model: TGI and the api pods (they read H2OGPT_BASE_MODEL) roll, the ConfigMap follows;
    # Weaviate stays.
    before = after
    cluster.kubectl(
        "patch",
        "h2ogpt",
        "roll",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"model": {"name": "org/other-model"}}}),
    )
    wait_for(
        lambda: (
            (c := get_json_or_none(cluster, "configmap", "roll-config", "-n", namespace))
            and c["data"]["H2OGPT_BASE_MODEL"] == "org/other-model"
        ),
        15,
        "the ConfigMap to follow the model",
    )
    wait_ready(cluster, namespace, "roll")
    after = wait_for_inference_roll(cluster, namespace, "roll", before)
    assert after["weaviate"] == before["weaviate"]
    inference = items(
        cluster, "deployment", namespace, f"{INSTANCE}=roll,app.kubernetes.io/component=inference"
    )
    assert "org/other-model" in inference[0]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_deleting_the_cr_removes_children_and_keeps_pvcs(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_manifest(cluster, namespace, small_stack("gone"))
    wait_ready(cluster, namespace, "gone")
    pvcs = {p["metadata"]["name"] for p in items(cluster, "pvc", namespace)}
    assert pvcs == {"gone-model-cache", "data-gone-weaviate-0"}

    cluster.kubectl("delete", "h2ogpt", "gone", "-n", namespace, "--wait=true", "--timeout=30s")

    def children_gone() -> bool:
        left = [
            *items(cluster, "deployments", namespace, f"{INSTANCE}=gone"),
            *items(cluster, "statefulsets", namespace, f"{INSTANCE}=gone"),
            *items(cluster, "services", namespace, f"{INSTANCE}=gone"),
            *items(cluster, "configmaps", namespace, f"{INSTANCE}=gone"),
            *items(cluster, "secrets", namespace, f"{INSTANCE}=gone"),
        ]
        return not left

    wait_for(children_gone, 30, "the garbage collector to remove the children")
    assert {p["metadata"]["name"] for p in items(cluster, "pvc", namespace)} == pvcs


def test_metrics_and_liveness(operator: OperatorProcess) -> None:
    samples = operator.metrics()
    assert any(k.startswith('h2ogpt_operator_reconciles_total{result="success"}') for k in samples)
    assert any(k.startswith("h2ogpt_operator_reconcile_duration_seconds_bucket") for k in samples)
    assert any(k.startswith("h2ogpt_operator_stacks{") for k in samples)
    assert Path(operator.log_path).exists()
