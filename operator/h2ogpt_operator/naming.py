"""Names, labels and URLs of a stack's children: `<cr>-<component>` and the app.kubernetes.io labels."""

from __future__ import annotations

FIELD_MANAGER = "h2ogpt-operator"
MANAGED_BY = "h2ogpt-operator"
CHECKSUM_ANNOTATION = "h2ogpt.dev/config-checksum"

INFERENCE = "inference"
WEAVIATE = "weaviate"
GRADIO = "gradio"
OPENAI = "openai"
CONFIG = "config"
AUTH = "auth"
MODEL_CACHE = "model-cache"

# Each engine's own default port, so its documentation and tooling apply unchanged.
INFERENCE_PORTS = {"tgi": 80, "vllm": 8000, "llamacpp": 8000}
WEAVIATE_HTTP_PORT = 8080
WEAVIATE_GRPC_PORT = 50051
GRADIO_PORT = 7860
OPENAI_PORT = 5000


def child_name(cr_name: str, component: str) -> str:
    return f"{cr_name}-{component}"


def selector_labels(cr_name: str, component: str) -> dict[str, str]:
    """The labels a Service or workload selects its pods by (immutable once a workload exists)."""
    return {
        "app.kubernetes.io/name": "h2ogpt",
        "app.kubernetes.io/instance": cr_name,
        "app.kubernetes.io/component": component,
    }


def labels(cr_name: str, component: str) -> dict[str, str]:
    return {**selector_labels(cr_name, component), "app.kubernetes.io/managed-by": MANAGED_BY}


def instance_selector(cr_name: str) -> str:
    """Label selector for every child of one CR."""
    return f"app.kubernetes.io/instance={cr_name},app.kubernetes.io/managed-by={MANAGED_BY}"


def service_host(cr_name: str, component: str, namespace: str) -> str:
    return f"{child_name(cr_name, component)}.{namespace}.svc"


def openai_endpoint(cr_name: str, namespace: str, port: int = OPENAI_PORT) -> str:
    return f"http://{service_host(cr_name, OPENAI, namespace)}:{port}/v1"


def gradio_endpoint(cr_name: str, namespace: str, port: int = GRADIO_PORT) -> str:
    return f"http://{service_host(cr_name, GRADIO, namespace)}:{port}"
