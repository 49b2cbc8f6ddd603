"""Names, labels and URLs of a stack's children: `<cr>-<component>` and the app.kubernetes.io labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
API = "api"  # the Gradio and OpenAI pods together (their NetworkPolicy)
DEMAND = "demand"  # the Lease the api pods renew when they hold a request (scale from zero)

# Each engine's own default port, so its documentation and tooling apply unchanged.
INFERENCE_PORTS = {"tgi": 80, "vllm": 8000, "llamacpp": 8000}
WEAVIATE_HTTP_PORT = 8080
WEAVIATE_GRPC_PORT = 50051
WEAVIATE_METRICS_PORT = 2112  # Weaviate's Prometheus listener (PROMETHEUS_MONITORING_ENABLED)
GRADIO_PORT = 7860
OPENAI_PORT = 5000


# How long a CR's name may be so that every child name is one the apiserver and the controllers
# accept. Services are DNS-1035 labels (at most 63 characters, a letter first, no dots), and the
# longest child is the Service `<cr>-weaviate-headless`: 45 characters of CR name. The StatefulSet
# `<cr>-weaviate` is tighter: its controller labels each pod with `controller-revision-hash:
# <statefulset>-<hash of up to 10 characters>`, a label value also capped at 63, so a longer name
# makes a StatefulSet the apiserver stores but whose pods never get created.
LABEL_MAX = 63
REVISION_HASH_MAX = 10
MAX_CR_NAME_LENGTH = LABEL_MAX - len(f"-{WEAVIATE}") - len("-") - REVISION_HASH_MAX
# A Service name: lowercase letters, digits and '-', starting with a letter, ending alphanumeric.
CR_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
CR_NAME_RULES = [
    {
        "rule": f"self.metadata.name.size() <= {MAX_CR_NAME_LENGTH}",
        "message": f"metadata.name must be at most {MAX_CR_NAME_LENGTH} characters: children are named "
        f"<name>-<component> (e.g. <name>-weaviate-headless, a Service name limited to {LABEL_MAX})",
    },
    {
        "rule": f"self.metadata.name.matches('{CR_NAME_PATTERN}')",
        "message": "metadata.name must start with a lowercase letter and hold only lowercase letters, digits "
        "and '-' (no '.'): children's Service names are DNS-1035 labels",
    },
]


def child_name(cr_name: str, component: str) -> str:
    return f"{cr_name}-{component}"


def selector_labels(cr_name: str, component: str) -> dict[str, str]:
    """The labels a Service or workload selects its pods by (immutable once a workload exists)."""
    return {
        "app.kubernetes.io/name": "h2ogpt",
        "app.kubernetes.io/instance": cr_name,
        "app.kubernetes.io/component": component,
    }


def component_of(obj: Mapping[str, Any]) -> str | None:
    """The stack component an object belongs to (its app.kubernetes.io/component label)."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component")


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
