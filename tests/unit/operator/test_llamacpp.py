"""The llamacpp engine: llama-cpp-python's OpenAI-compatible server on CPU, a GGUF from its image."""

from __future__ import annotations

from typing import Any

import pytest
from h2ogpt_operator import builders, naming
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.config import OperatorConfig
from h2ogpt_operator.models import H2oGPTDeploymentSpec
from h2ogpt_operator.status import Observed, compute_status
from pydantic import ValidationError

STACK = Stack(name="demo", namespace="team-a")
CONFIG = OperatorConfig()
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def llamacpp_spec(model: dict[str, Any] | None = None, **inference: Any) -> H2oGPTDeploymentSpec:
    section = {"engine": "llamacpp", "gpus": 0, **inference}
    return H2oGPTDeploymentSpec.model_validate(
        {"model": {"name": MODEL, **(model or {})}, "inference": section}
    )


def inference_pod(spec: H2oGPTDeploymentSpec, config: OperatorConfig = CONFIG) -> dict[str, Any]:
    deployment = builders.build_inference_deployment(STACK, spec, config)
    assert deployment is not None
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def flag(args: list[str], name: str) -> str | None:
    """The value of the last `name` in args (llama-cpp-python's argparse keeps the last)."""
    values = [args[i + 1] for i, arg in enumerate(args) if arg == name]
    return values[-1] if values else None


def test_args_serve_the_gguf_under_the_model_name() -> None:
    args = inference_pod(llamacpp_spec(model={"maxSeqLen": 2048}))["containers"][0]["args"]
    assert args == [
        "--model", "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "--model_alias", MODEL,
        "--n_ctx", "2048",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--interrupt_requests", "False",
        "--n_threads", "1",
        "--n_threads_batch", "1",
    ]  # fmt: skip


def test_model_path_and_extra_args() -> None:
    spec = llamacpp_spec(llamacpp={"modelPath": "/models/other.gguf"}, extraArgs=["--n_batch", "256"])
    args = inference_pod(spec)["containers"][0]["args"]
    assert flag(args, "--model") == "/models/other.gguf"
    assert args[-2:] == ["--n_batch", "256"]


@pytest.mark.parametrize(
    ("inference", "threads"),
    [
        ({}, "1"),  # the default request: one CPU
        ({"resources": {"requests": {"cpu": "2500m"}}}, "3"),
        ({"resources": {"requests": {"cpu": 1}, "limits": {"cpu": "4"}}}, "4"),  # the limit wins
        ({"resources": {"requests": {"cpu": "2"}}, "llamacpp": {"threads": 6}}, "6"),  # explicit wins
        ({"resources": {"limits": {"memory": "1Gi"}}}, None),  # no CPU sizing: the server's default
    ],
)
def test_threads_follow_the_pods_cpu(inference: dict[str, Any], threads: str | None) -> None:
    args = inference_pod(llamacpp_spec(**inference))["containers"][0]["args"]
    assert flag(args, "--n_threads") == threads
    assert flag(args, "--n_threads_batch") == threads


@pytest.mark.parametrize(
    ("quantity", "cores"),
    [("500m", 0.5), ("2", 2.0), (3, 3.0), ("1.5", 1.5), ("1k", 1000.0), (".5", 0.5), ("1e3", 1000.0),
     ("+2", 2.0), ("250000u", 0.25)],
)
def test_cpu_cores(quantity: int | str, cores: float) -> None:
    assert builders.cpu_cores(quantity) == cores


def test_no_gpu_no_cache_no_hugging_face() -> None:
    spec = llamacpp_spec(
        model={"hfTokenSecretRef": {"name": "hf"}},
        gpus=1,  # the apiserver's default; ignored for llamacpp
        modelCache={"enabled": True},
    )
    pod = inference_pod(spec)
    container = pod["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "512Mi"}}
    assert "tolerations" not in pod
    assert "env" not in container
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert builders.build_model_cache_pvc(STACK, spec) is None
    kinds = {c["kind"] for c in builders.build_children(STACK, spec, CONFIG, {})}
    assert "PersistentVolumeClaim" not in kinds
    # The token is not used, so a missing Secret must not hold the stack back.
    assert builders.referenced_secrets(spec) == []


def test_user_resources_tolerations_and_env_are_passed_as_given() -> None:
    spec = llamacpp_spec(
        resources={"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        tolerations=[{"key": "cpu-pool", "operator": "Exists", "effect": "NoSchedule"}],
        env=[{"name": "LLAMA_ARG", "value": "1"}],
        nodeSelector={"pool": "cpu"},
    )
    pod = inference_pod(spec)
    container = pod["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    assert pod["tolerations"] == [{"key": "cpu-pool", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["env"] == [{"name": "LLAMA_ARG", "value": "1"}]
    assert pod["nodeSelector"] == {"pool": "cpu"}


def test_probes_use_a_route_that_does_not_wait_for_the_model_lock() -> None:
    container = inference_pod(llamacpp_spec())["containers"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/openapi.json", "port": "http"}, probe
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_deployment_rolls_without_downtime_and_service_targets_8000() -> None:
    spec = llamacpp_spec()
    deployment = builders.build_inference_deployment(STACK, spec, CONFIG)
    assert deployment is not None
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    service = builders.build_inference_service(STACK, spec)
    assert service is not None
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]


def test_image_default_override_and_environment() -> None:
    spec = llamacpp_spec()
    assert inference_pod(spec)["containers"][0]["image"] == "ghcr.io/h2ogpt-platform/h2ogpt-llamacpp:0.1.0"
    from_env = OperatorConfig.from_env({"H2OGPT_OPERATOR_LLAMACPP_IMAGE": "registry.example/llamacpp:2"})
    assert inference_pod(spec, from_env)["containers"][0]["image"] == "registry.example/llamacpp:2"
    own = llamacpp_spec(image="registry.example/mine:1")
    assert inference_pod(own, from_env)["containers"][0]["image"] == "registry.example/mine:1"


def test_api_pods_reach_it_as_an_openai_server() -> None:
    settings = builders.build_settings(STACK, llamacpp_spec())
    assert settings["H2OGPT_INFERENCE_SERVER"] == "openai:http://demo-inference.team-a.svc:8000/v1"
    assert settings["H2OGPT_BASE_MODEL"] == MODEL


def test_service_monitor_does_not_scrape_llamacpp() -> None:
    spec = H2oGPTDeploymentSpec.model_validate(
        {
            "model": {"name": MODEL},
            "inference": {"engine": "llamacpp"},
            "monitoring": {"serviceMonitor": {"enabled": True}},
        }
    )
    monitor = builders.build_service_monitor(STACK, spec)
    assert monitor is not None
    assert monitor["spec"]["selector"]["matchExpressions"][0]["values"] == [
        naming.OPENAI,
        naming.GRADIO,
        naming.WEAVIATE,
    ]


@pytest.mark.parametrize("gpus", [0, 1])
def test_llamacpp_needs_no_gpu(gpus: int) -> None:
    spec = llamacpp_spec(gpus=gpus)
    assert spec.inference.engine == "llamacpp"


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_gpu_engines_still_need_a_gpu(engine: str) -> None:
    with pytest.raises(ValidationError, match=r"inference\.gpus must be at least 1"):
        H2oGPTDeploymentSpec.model_validate(
            {"model": {"name": "m"}, "inference": {"engine": engine, "gpus": 0}}
        )


@pytest.mark.parametrize(
    ("llamacpp", "message"),
    [
        ({"modelPath": "models/relative.gguf"}, "should match pattern"),
        ({"threads": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_llamacpp_settings_are_refused(llamacpp: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        llamacpp_spec(llamacpp=llamacpp)


def _workloads(inference_ready: int) -> dict[str, dict[str, Any] | None]:
    def workload(kind: str, name: str, ready: int) -> dict[str, Any]:
        return {
            "kind": kind,
            "metadata": {"name": name, "generation": 1},
            "status": {"observedGeneration": 1, "readyReplicas": ready, "updatedReplicas": ready},
        }

    return {
        naming.INFERENCE: workload("Deployment", "demo-inference", inference_ready),
        naming.WEAVIATE: workload("StatefulSet", "demo-weaviate", 1),
        naming.GRADIO: workload("Deployment", "demo-gradio", 1),
        naming.OPENAI: workload("Deployment", "demo-openai", 1),
    }


def test_status_reads_the_inference_deployment() -> None:
    ready = compute_status(STACK, llamacpp_spec(), Observed(1, _workloads(1)), None, "t")
    found = {c["type"]: c for c in ready["conditions"]}
    assert found["InferenceReady"]["reason"] == "Ready"
    assert found["Ready"]["status"] == "True"


def test_unschedulable_pod_names_cpu_and_memory_not_gpus() -> None:
    stuck = {
        "metadata": {"name": "demo-inference-abc", "labels": {"app.kubernetes.io/component": "inference"}},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient cpu.",
                }
            ]
        },
    }
    spec = llamacpp_spec(resources={"requests": {"cpu": "8"}, "limits": {"memory": "4Gi"}})
    status = compute_status(STACK, spec, Observed(1, _workloads(0), pods=[stuck]), None, "t")
    message = {c["type"]: c for c in status["conditions"]}["InferenceReady"]["message"]
    assert "it requests cpu 8, memory 4Gi;" in message
    assert "gpu" not in message.lower()
