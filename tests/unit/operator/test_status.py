"""The status roll-up is a pure function of what the cluster shows."""

from __future__ import annotations

from typing import Any

from h2ogpt_operator import naming
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.models import H2oGPTDeploymentSpec
from h2ogpt_operator.status import Observed, compute_status, is_ready, status_differs

STACK = Stack(name="demo", namespace="team-a")
T0 = "2025-01-01T00:00:00Z"
T1 = "2025-01-01T00:05:00Z"


def spec_of(**sections: Any) -> H2oGPTDeploymentSpec:
    return H2oGPTDeploymentSpec.model_validate({"model": {"name": "org/model"}, **sections})


def workload(kind: str, name: str, ready: int, replicas: int = 1) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": name, "generation": 2},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": ready},
    }


def all_workloads(inference_ready: int = 1) -> dict[str, dict[str, Any] | None]:
    return {
        naming.INFERENCE: workload("Deployment", "demo-inference", inference_ready),
        naming.WEAVIATE: workload("StatefulSet", "demo-weaviate", 1),
        naming.GRADIO: workload("Deployment", "demo-gradio", 1),
        naming.OPENAI: workload("Deployment", "demo-openai", 1),
    }


def pod(component: str, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": f"demo-{component}-abc", "labels": {"app.kubernetes.io/component": component}},
        "status": status,
    }


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_ready() -> None:
    status = compute_status(STACK, spec_of(), Observed(generation=3, workloads=all_workloads()), None, T0)
    assert is_ready(status)
    assert status["observedGeneration"] == 3
    assert status["endpoints"] == {
        "openai": "http://demo-openai.team-a.svc:5000/v1",
        "gradio": "http://demo-gradio.team-a.svc:7860",
    }
    assert {c["type"] for c in status["conditions"]} == {
        "Ready", "InferenceReady", "RetrievalReady", "FrontendReady", "OpenAIReady"
    }  # fmt: skip
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == T0 for c in status["conditions"])


def test_unschedulable_gpu_pod_names_the_gpus() -> None:
    stuck = pod(naming.INFERENCE, {
        "phase": "Pending",
        "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        }],
    })  # fmt: skip
    observed = Observed(generation=1, workloads=all_workloads(inference_ready=0), pods=[stuck])
    status = compute_status(STACK, spec_of(inference={"gpus": 16}), observed, None, T0)
    inference = conditions(status)["InferenceReady"]
    assert inference["status"] == "False"
    assert inference["reason"] == "Unschedulable"
    assert "16 nvidia.com/gpu" in inference["message"]
    assert "Insufficient nvidia.com/gpu" in inference["message"]
    ready = conditions(status)["Ready"]
    assert ready["status"] == "False"
    assert ready["reason"] == "Unschedulable"
    assert "16 nvidia.com/gpu" in ready["message"]


def test_image_pull_and_crash_loop_are_named() -> None:
    pulling = pod(naming.OPENAI, {"containerStatuses": [{
        "name": "api", "image": "registry.example/api:9", "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}},
    }]})  # fmt: skip
    crashing = pod(naming.GRADIO, {"containerStatuses": [{
        "name": "api", "image": "x", "restartCount": 5,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 2}},
    }]})  # fmt: skip
    workloads = all_workloads()
    workloads[naming.OPENAI] = workload("Deployment", "demo-openai", 0)
    workloads[naming.GRADIO] = workload("Deployment", "demo-gradio", 0)
    status = compute_status(STACK, spec_of(), Observed(1, workloads, pods=[pulling, crashing]), None, T0)
    found = conditions(status)
    assert found["OpenAIReady"]["reason"] == "ImagePullBackOff"
    assert "registry.example/api:9 of pod demo-openai-abc cannot be pulled" in found["OpenAIReady"]["message"]
    assert found["FrontendReady"]["reason"] == "CrashLoopBackOff"
    assert "5 restarts, last exit code 2" in found["FrontendReady"]["message"]


def test_missing_secret_is_named() -> None:
    spec = spec_of(model={"name": "org/model", "hfTokenSecretRef": {"name": "hf"}})
    observed = Observed(1, all_workloads(0), missing_secrets=[("spec.model.hfTokenSecretRef", "hf")])
    found = conditions(compute_status(STACK, spec, observed, None, T0))
    assert found["InferenceReady"]["reason"] == "SecretMissing"
    assert found["InferenceReady"]["message"] == (
        "Secret 'hf' (spec.model.hfTokenSecretRef) not found in namespace team-a"
    )
    assert found["OpenAIReady"]["status"] == "True"


def test_transition_time_moves_only_when_status_flips() -> None:
    first = compute_status(STACK, spec_of(), Observed(1, all_workloads(0)), None, T0)
    same = compute_status(STACK, spec_of(), Observed(1, all_workloads(0)), first, T1)
    assert same == first
    assert not status_differs(first, same)
    flipped = compute_status(STACK, spec_of(), Observed(1, all_workloads(1)), first, T1)
    assert conditions(flipped)["InferenceReady"]["lastTransitionTime"] == T1
    assert conditions(flipped)["RetrievalReady"]["lastTransitionTime"] == T0
    assert status_differs(first, flipped)


def test_status_differs_ignores_keys_it_does_not_own() -> None:
    desired = compute_status(STACK, spec_of(), Observed(1, all_workloads()), None, T0)
    assert not status_differs({**desired, "kopf": {"progress": {}}}, desired)


def test_external_disabled_and_suspended() -> None:
    spec = spec_of(
        inference={"engine": "external", "gpus": 0, "external": {"url": "https://x/v1"}},
        retrieval={"enabled": False},
        frontend={"enabled": False},
    )
    workloads: dict[str, dict[str, Any] | None] = {naming.OPENAI: workload("Deployment", "demo-openai", 1)}
    status = compute_status(STACK, spec, Observed(1, workloads), None, T0)
    assert is_ready(status)
    assert conditions(status)["InferenceReady"]["reason"] == "External"
    assert status["endpoints"] == {"openai": "http://demo-openai.team-a.svc:5000/v1"}
    suspended = compute_status(STACK, spec_of(suspend=True), Observed(1, all_workloads(0)), None, T0)
    assert conditions(suspended)["Ready"]["reason"] == "Suspended"


def test_missing_workload_and_service_monitor_crd() -> None:
    workloads = all_workloads()
    workloads[naming.WEAVIATE] = None
    spec = spec_of(monitoring={"serviceMonitor": {"enabled": True}})
    status = compute_status(STACK, spec, Observed(1, workloads, service_monitor_crd=False), None, T0)
    found = conditions(status)
    assert found["RetrievalReady"]["reason"] == "NotCreated"
    assert found["MonitoringReady"]["reason"] == "ServiceMonitorCRDMissing"


def test_an_autoscaled_stack_is_judged_by_the_replicas_applied() -> None:
    """Scaled to zero by the autoscaler, a stack is Ready (requests are held); scaled up, it waits
    for the new count, not the spec's `replicas`."""
    spec = spec_of(inference={"replicas": 1, "autoscaling": {"minReplicas": 0, "maxReplicas": 4}})
    at_zero = compute_status(STACK, spec, Observed(1, all_workloads(0), inference_replicas=0), None, T0)
    assert conditions(at_zero)["InferenceReady"]["reason"] == "ScaledToZero"
    assert is_ready(at_zero)
    growing = compute_status(STACK, spec, Observed(1, all_workloads(1), inference_replicas=3), None, T0)
    assert conditions(growing)["InferenceReady"]["reason"] == "Progressing"
    assert "1/3 replicas ready" in conditions(growing)["InferenceReady"]["message"]


def test_a_rollout_is_not_ready_until_no_old_pod_is_left() -> None:
    """Mid-rollout a Deployment's readyReplicas still counts the old pod: the new one may not even
    have started. Ready waits, as `kubectl rollout status` does, until only updated pods remain."""
    workloads = all_workloads()
    rolling = workloads[naming.OPENAI]
    assert rolling is not None
    rolling["status"] = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1}
    status = compute_status(STACK, spec_of(), Observed(generation=1, workloads=workloads), None, T0)
    openai_ready = conditions(status)["OpenAIReady"]
    assert (openai_ready["status"], openai_ready["reason"]) == ("False", "Progressing")
    assert not is_ready(status)

    rolling["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    assert is_ready(compute_status(STACK, spec_of(), Observed(generation=1, workloads=workloads), None, T0))


def test_a_statefulset_is_not_ready_while_it_rolls_to_a_new_revision() -> None:
    workloads = all_workloads()
    weaviate = workloads[naming.WEAVIATE]
    assert weaviate is not None
    weaviate["status"].update(currentRevision="demo-weaviate-1", updateRevision="demo-weaviate-2")
    status = compute_status(STACK, spec_of(), Observed(generation=1, workloads=workloads), None, T0)
    assert conditions(status)["RetrievalReady"]["status"] == "False"
    weaviate["status"]["currentRevision"] = "demo-weaviate-2"
    assert is_ready(compute_status(STACK, spec_of(), Observed(generation=1, workloads=workloads), None, T0))
