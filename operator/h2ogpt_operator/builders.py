"""Pure builders: an H2oGPTDeployment spec in, the desired child manifests out.

Nothing here talks to the cluster. Owner references are added by the reconciler (kopf.adopt),
because a kept PVC must not have one. Every function is covered by golden-YAML unit tests.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes.utils.quantity import parse_quantity

from h2ogpt_operator import naming
from h2ogpt_operator.config import OperatorConfig
from h2ogpt_operator.models import (
    ANSWER_GRACE_S,
    API_DRAIN_S,
    GPU_ENGINES,
    IN_CLUSTER_ENGINES,
    ApiComponentSpec,
    H2oGPTDeploymentSpec,
    LlamaCppSpec,
    NetworkPolicyPeer,
    ResourceRequirements,
    SecretKeyRef,
)

Manifest = dict[str, Any]

API_SAVE_DIR = "/var/lib/h2ogpt"
WEAVIATE_DATA_DIR = "/var/lib/weaviate"
WEAVIATE_USER = "h2ogpt"

# Default keys inside referenced Secrets (a ref may name another key).
API_KEYS_KEY = "H2OGPT_H2OGPT_API_KEYS"
USERS_KEY = "auth.json"
HF_TOKEN_KEY = "HF_TOKEN"  # noqa: S105 - the name of a key, not a secret
WEAVIATE_API_KEY_KEY = "WEAVIATE_API_KEY"
OPENAI_API_KEY_KEY = "OPENAI_API_KEY"

# The uid and gid the h2ogpt-platform images (api, weaviate, llamacpp) run as: `USER 10001:10001`.
PLATFORM_UID = 10001

# Pod Security Standard `restricted`, for every pod the operator creates. The uid is set explicitly
# (not only runAsNonRoot) so that the kubelet can verify it whatever USER an image declares (TGI's
# and vLLM's declare none, i.e. root), and fsGroup makes PVC-backed volumes writable to that user.
_RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": PLATFORM_UID,
    "runAsGroup": PLATFORM_UID,
    "fsGroup": PLATFORM_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Every program we build writes only to its volumes (and /tmp, an emptyDir): the image stays read-only.
_RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}
# TGI and vLLM also pass `restricted`. Their upstream images declare no USER (root by default) but
# need no privilege: they write the model cache (/data, a PVC made writable by fsGroup) and caches
# under $HOME (Triton, TorchInductor, outlines, numba), which `_GPU_ENGINE_ENV` points into the /tmp
# emptyDir. The root filesystem stays writable for them: unlike our images, no TGI or vLLM image
# runs on the machines that test this project, so a read-only root is unproven (and a non-root uid
# can write nothing there outside the world-writable /var/tmp anyway).
_GPU_ENGINE_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
# The uid has no /etc/passwd entry in those images: torch's compile cache calls getpass.getuser(),
# which reads USER before the password database, and HOME would otherwise be `/`.
_GPU_ENGINE_ENV = [
    {"name": "HOME", "value": "/tmp"},  # noqa: S108 - an emptyDir, private to the pod
    {"name": "USER", "value": "h2ogpt"},
]

_TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}  # noqa: S108 - an emptyDir, private to the pod
_TMP_VOLUME = {"name": "tmp", "emptyDir": {}}

# llama.cpp's CPU pod when `inference.resources` is empty: the server with SmolLM2-135M (Q4_1) and a
# 4096-token context measured ~390 MB resident after a generation; one core runs its one thread.
LLAMACPP_DEFAULT_REQUESTS: dict[str, int | str] = {"cpu": "1", "memory": "512Mi"}

INFERENCE_PORT_NAME = "http"  # the inference Service's one port; the api pods route to its endpoints


@dataclass(frozen=True)
class Stack:
    """Which CR the children belong to."""

    name: str
    namespace: str


def _bool(value: bool) -> str:
    return "True" if value else "False"


def _metadata(stack: Stack, component: str, name: str | None = None) -> Manifest:
    return {
        "name": name or naming.child_name(stack.name, component),
        "namespace": stack.namespace,
        "labels": naming.labels(stack.name, component),
    }


class _NoAliasDumper(yaml.SafeDumper):
    """YAML without anchors: manifests share small dicts (probes), readers should not see `&id001`."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(documents: list[Manifest]) -> str:
    """Manifests as multi-document YAML, keys sorted (golden files, `--dry-run` output)."""
    return yaml.dump_all(documents, Dumper=_NoAliasDumper, sort_keys=True, width=110)


def settings_checksum(*parts: Mapping[str, Any] | str) -> str:
    """sha256 over canonical JSON: the pod-template annotation that rolls pods when their input changes."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _resources(resources: ResourceRequirements, extra_limits: Mapping[str, int] | None = None) -> Manifest:
    out: Manifest = {}
    if resources.requests:
        out["requests"] = dict(resources.requests)
    limits = {**resources.limits, **(extra_limits or {})}
    if limits:
        out["limits"] = limits
    return out


def _secret_env(env_name: str, ref: SecretKeyRef, default_key: str) -> Manifest:
    return {
        "name": env_name,
        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key or default_key}},
    }


# Secret name -> key -> digest of that key's value (watchcache.value_digest), for the Secrets that
# exist; never a value. A pod template's checksum includes the digests of exactly the keys its
# containers read, so rotating a Secret rolls the pods that read it, and no other.
SecretDigests = Mapping[str, Mapping[str, str]]
NO_SECRETS: SecretDigests = {}


def secret_keys_read(pod_spec: Manifest) -> list[tuple[str, str]]:
    """(Secret name, key) of every `secretKeyRef` in a pod's containers' env, sorted, once each."""
    found = {
        (ref["name"], ref["key"])
        for container in pod_spec.get("containers", [])
        for variable in container.get("env", [])
        if (ref := (variable.get("valueFrom") or {}).get("secretKeyRef"))
    }
    return sorted(found)


def secrets_read_digest(pod_spec: Manifest, digests: SecretDigests) -> dict[str, str]:
    """'name/key' -> the value's digest ('' while the Secret or key is missing: it rolls when it appears)."""
    return {
        f"{name}/{key}": (digests.get(name) or {}).get(key, "") for name, key in secret_keys_read(pod_spec)
    }


# --- which Secrets a stack uses ------------------------------------------------------------------------


def generates_api_keys(spec: H2oGPTDeploymentSpec) -> bool:
    return spec.auth.api_keys_secret_ref is None


def runs_weaviate(spec: H2oGPTDeploymentSpec) -> bool:
    return spec.retrieval.enabled and spec.retrieval.external_url is None


def generates_weaviate_key(spec: H2oGPTDeploymentSpec) -> bool:
    return runs_weaviate(spec) and spec.retrieval.api_key_secret_ref is None


def referenced_secrets(spec: H2oGPTDeploymentSpec) -> list[tuple[str, SecretKeyRef]]:
    """(spec path, ref) for every Secret the user must provide; used to report a missing one by name."""
    refs: list[tuple[str, SecretKeyRef | None]] = [
        ("spec.model.hfTokenSecretRef", spec.model.hf_token_secret_ref if _downloads_model(spec) else None),
        (
            "spec.inference.external.apiKeySecretRef",
            spec.inference.external.api_key_secret_ref if spec.inference.external else None,
        ),
        (
            "spec.retrieval.apiKeySecretRef",
            spec.retrieval.api_key_secret_ref if spec.retrieval.enabled else None,
        ),
        ("spec.auth.apiKeysSecretRef", spec.auth.api_keys_secret_ref),
        ("spec.auth.usersSecretRef", spec.auth.users_secret_ref),
    ]
    return [(path, ref) for path, ref in refs if ref is not None]


def _runs_inference(spec: H2oGPTDeploymentSpec) -> bool:
    return spec.inference.engine in IN_CLUSTER_ENGINES


def _downloads_model(spec: H2oGPTDeploymentSpec) -> bool:
    """TGI and vLLM fetch the model from Hugging Face into the cache; llama.cpp's GGUF is in its image."""
    return spec.inference.engine in GPU_ENGINES


def build_auth_secret(
    stack: Stack, spec: H2oGPTDeploymentSpec, new_token: Callable[[], str]
) -> Manifest | None:
    """`<cr>-auth`: generated credentials the spec does not reference; None when nothing is generated.

    Created once and never regenerated (the reconciler only creates it when absent), so clients
    keep working across operator restarts.
    """
    data: dict[str, str] = {}
    if generates_api_keys(spec):
        data[API_KEYS_KEY] = json.dumps([new_token()])
    if generates_weaviate_key(spec):
        data[WEAVIATE_API_KEY_KEY] = new_token()
    if not data:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(stack, naming.AUTH),
        "type": "Opaque",
        "stringData": data,
    }


def api_keys_ref(stack: Stack, spec: H2oGPTDeploymentSpec) -> SecretKeyRef:
    return spec.auth.api_keys_secret_ref or SecretKeyRef(
        name=naming.child_name(stack.name, naming.AUTH), key=API_KEYS_KEY
    )


def weaviate_key_ref(stack: Stack, spec: H2oGPTDeploymentSpec) -> SecretKeyRef | None:
    if spec.retrieval.api_key_secret_ref is not None:
        return spec.retrieval.api_key_secret_ref
    if generates_weaviate_key(spec):
        return SecretKeyRef(name=naming.child_name(stack.name, naming.AUTH), key=WEAVIATE_API_KEY_KEY)
    return None


# --- settings (ConfigMap) ------------------------------------------------------------------------------


def inference_server_setting(stack: Stack, spec: H2oGPTDeploymentSpec) -> str:
    """`--inference_server` in h2oGPT's format, pointing at the inference Service (or the external URL)."""
    engine = spec.inference.engine
    host = naming.service_host(stack.name, naming.INFERENCE, stack.namespace)
    if engine == "tgi":
        return f"http://{host}:{naming.INFERENCE_PORTS['tgi']}"
    if engine == "vllm":
        return f"vllm:{host}:{naming.INFERENCE_PORTS['vllm']}"
    if engine == "llamacpp":
        # llama-cpp-python's server is OpenAI-compatible; h2ogpt-api's `openai:` form takes the
        # base URL the openai client takes, /v1 included.
        return f"openai:http://{host}:{naming.INFERENCE_PORTS['llamacpp']}/v1"
    external = spec.inference.external
    if external is None:  # the model validator makes this unreachable; keep the type checker honest
        raise ValueError("inference.external is required when inference.engine is external")
    if external.type == "openai":
        return f"openai:{external.url}"
    if external.type == "vllm":
        return "vllm:" + external.url.split("://", 1)[1].rstrip("/")
    return external.url


def weaviate_url(stack: Stack, spec: H2oGPTDeploymentSpec) -> str:
    if not spec.retrieval.enabled:
        return ""
    if spec.retrieval.external_url:
        return spec.retrieval.external_url
    host = naming.service_host(stack.name, naming.WEAVIATE, stack.namespace)
    return f"http://{host}:{naming.WEAVIATE_HTTP_PORT}"


# An api pod may start before Weaviate answers (a new stack, a Weaviate pod restarting) or before the
# NetworkPolicy that admits it covers its address: it waits this long at start instead of exiting
# into the kubelet's crash-loop backoff.
API_WEAVIATE_WAIT_S = 300
# What one h2ogpt-api process of an openai pod needs, rounded up from what it holds resident with the
# embedding model loaded (about 385 MiB, docs/operator.md): the default workers fit the memory limit.
API_WORKER_MEMORY_MIB = 400
# The api container's startup probe (every 5 s) allows that wait and a minute more to load and serve.
API_STARTUP_PROBES = (API_WEAVIATE_WAIT_S + 60) // 5


def build_settings(stack: Stack, spec: H2oGPTDeploymentSpec) -> dict[str, str]:
    """The `H2OGPT_*` environment of the api pods (docs/architecture.md, "Settings contract"). No secrets."""
    modes = ["UserData", "MyData", "LLM"] if spec.retrieval.enabled else ["LLM"]
    return {
        "H2OGPT_INFERENCE_SERVER": inference_server_setting(stack, spec),
        "H2OGPT_BASE_MODEL": spec.model.name,
        "H2OGPT_MAX_SEQ_LEN": str(spec.model.max_seq_len),
        "H2OGPT_PROMPT_TYPE": spec.model.prompt_type,
        "H2OGPT_SYSTEM_PROMPT": spec.model.system_prompt,
        "H2OGPT_ASYNC_OUTPUT": _bool(spec.generation.async_output),
        "H2OGPT_NUM_ASYNC": str(spec.generation.num_async),
        "H2OGPT_AUTH_ACCESS": spec.auth.access,
        "H2OGPT_GUEST_NAME": spec.auth.guest_name,
        "H2OGPT_ENFORCE_H2OGPT_API_KEY": _bool(spec.auth.enforce_api_key),
        "H2OGPT_REQUESTS_PER_MINUTE": str(spec.auth.limits.requests_per_minute),
        "H2OGPT_TOKENS_PER_MINUTE": str(spec.auth.limits.tokens_per_minute),
        "H2OGPT_LANGCHAIN_MODE": "LLM",
        "H2OGPT_LANGCHAIN_MODES": json.dumps(modes),
        "H2OGPT_WEAVIATE_URL": weaviate_url(stack, spec),
        "H2OGPT_WEAVIATE_WAIT_SECONDS": str(API_WEAVIATE_WAIT_S),
        "H2OGPT_EMBEDDING_SERVER": spec.retrieval.embedding.server or "",
        "H2OGPT_HF_EMBEDDING_MODEL": spec.retrieval.embedding.model,
        "H2OGPT_ALLOWED_URL_HOSTS": ",".join(spec.retrieval.allowed_url_hosts),
        "H2OGPT_BLOCKED_URL_CIDRS": ",".join(spec.retrieval.blocked_url_cidrs),
        "H2OGPT_SAVE_DIR": API_SAVE_DIR,
        "H2OGPT_SERVER_NAME": "0.0.0.0",
        "H2OGPT_OPENAI_PORT": str(naming.OPENAI_PORT),
        "H2OGPT_GRADIO_PORT": str(naming.GRADIO_PORT),
        **hold_settings(stack, spec),
        **routing_settings(stack, spec),
    }


def routes_across_replicas(spec: H2oGPTDeploymentSpec) -> bool:
    """Whether the api pods route across inference replicas themselves (from the Service's EndpointSlices).

    Decided on how many replicas the stack CAN have (`replicas`, or autoscaling's `maxReplicas`), not on
    how many it has now: an autoscaled stack keeps one setting while it scales, so its api pods do not
    roll (and its ServiceAccount and Role do not come and go) with every decision. A stack that can be
    at zero routes too, even to one replica at most: the watch tells a held request at once that there
    is no replica (through the Service it first waits out a connect), and forwards it the moment the
    new pod's endpoint is Ready, to the pod itself, not when the node's proxy has caught up.
    """
    if not _runs_inference(spec):
        return False
    scaling = spec.inference.autoscaling
    most = scaling.max_replicas if scaling is not None else spec.inference.replicas
    return most > 1 or scales_to_zero(spec)


def routing_settings(stack: Stack, spec: H2oGPTDeploymentSpec) -> dict[str, str]:
    """`--inference_endpointslices <ns>/<cr>-inference:http` when the stack can have several replicas.

    With one replica the Service's own address is the replica: no watch, and no token in the api pods.
    """
    if not routes_across_replicas(spec):
        return {}
    service = naming.child_name(stack.name, naming.INFERENCE)
    return {"H2OGPT_INFERENCE_ENDPOINTSLICES": f"{stack.namespace}/{service}:{INFERENCE_PORT_NAME}"}


def hold_settings(stack: Stack, spec: H2oGPTDeploymentSpec) -> dict[str, str]:
    """With autoscaling, the api pods hold requests while no inference replica is ready (scale from zero);
    where the autoscaler can add replicas they renew the stack's demand Lease as they start holding one,
    or as they alone have more than targetInFlight per ready replica in flight (api demand.py)."""
    scaling = spec.inference.autoscaling
    if scaling is None:
        return {}
    held = {"H2OGPT_HOLD_SECONDS": str(scaling.hold_seconds), "H2OGPT_MAX_HELD": str(scaling.max_held)}
    if signals_demand(spec):
        held["H2OGPT_DEMAND_LEASE"] = f"{stack.namespace}/{naming.child_name(stack.name, naming.DEMAND)}"
        held["H2OGPT_SCALE_UP_IN_FLIGHT"] = str(scaling.target_in_flight)
        held["H2OGPT_SCALE_UP_MAX_REPLICAS"] = str(scaling.max_replicas)
    return held


def scales_to_zero(spec: H2oGPTDeploymentSpec) -> bool:
    """Whether the stack's inference can be at zero replicas, where a request waits for the operator to
    ask for one: autoscaling with `minReplicas: 0`."""
    scaling = spec.inference.autoscaling
    return _runs_inference(spec) and scaling is not None and scaling.min_replicas == 0


def signals_demand(spec: H2oGPTDeploymentSpec) -> bool:
    """Whether the api pods tell the operator at once that more replicas are needed (the demand Lease):
    autoscaling with room to add one (maxReplicas above minReplicas, which includes every stack that
    can be at zero). Such a stack always routes across replicas (`routes_across_replicas`), so its api
    pods know how many are ready."""
    scaling = spec.inference.autoscaling
    return _runs_inference(spec) and scaling is not None and scaling.max_replicas > scaling.min_replicas


def build_demand_lease(stack: Stack, spec: H2oGPTDeploymentSpec) -> Manifest | None:
    """`<cr>-demand`, the Lease the api pods renew when they start holding a request or pass the target
    in flight (api demand.py): the operator watches it and reads the api pods' figures at once instead
    of at its next poll. Created empty: its holder and renew time are the api pods' to write
    (server-side apply leaves them alone)."""
    if not signals_demand(spec):
        return None
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": _metadata(stack, naming.DEMAND),
    }


def inference_replicas(spec: H2oGPTDeploymentSpec, decided: int | None = None) -> int:
    """The inference Deployment's replicas: 0 when suspended; `replicas` without autoscaling; with it,
    the autoscaler's last decision (`status.autoscaling.desiredReplicas`, passed as `decided`), or
    `replicas` before its first, always within minReplicas .. maxReplicas. The reconciler is the only
    writer of the count, so the autoscaler and the reconcile never fight over it."""
    if spec.suspend:
        return 0
    scaling = spec.inference.autoscaling
    if scaling is None:
        return spec.inference.replicas
    wanted = spec.inference.replicas if decided is None else decided
    return min(max(wanted, scaling.min_replicas), scaling.max_replicas)


def build_config_map(stack: Stack, spec: H2oGPTDeploymentSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(stack, naming.CONFIG),
        "data": build_settings(stack, spec),
    }


# --- inference -----------------------------------------------------------------------------------------


def _gpu_engine_args(spec: H2oGPTDeploymentSpec) -> list[str]:
    model = spec.model
    inference = spec.inference
    if inference.engine == "tgi":
        args = ["--model-id", model.name]
        if model.revision:
            args += ["--revision", model.revision]
        args += [
            "--num-shard", str(inference.gpus),
            # TGI budgets prompt + completion in one window; leave at least one token to generate.
            "--max-input-tokens", str(model.max_seq_len - 1),
            "--max-total-tokens", str(model.max_seq_len),
            "--max-batch-prefill-tokens", str(model.max_seq_len),
            "--hostname", "0.0.0.0",
            "--port", str(naming.INFERENCE_PORTS["tgi"]),
        ]  # fmt: skip
        if inference.quantize:
            args += ["--quantize", inference.quantize]
    else:
        args = ["--model", model.name, "--served-model-name", model.name]
        if model.revision:
            args += ["--revision", model.revision]
        args += [
            "--tensor-parallel-size", str(inference.gpus),
            "--max-model-len", str(model.max_seq_len),
            "--download-dir", "/data",
            "--host", "0.0.0.0",
            "--port", str(naming.INFERENCE_PORTS["vllm"]),
        ]  # fmt: skip
        if inference.quantize:
            args += ["--quantization", inference.quantize]
    return args + list(inference.extra_args)


def quantity_value(quantity: int | str) -> float:
    """A Kubernetes quantity as a number: "500m" -> 0.5, "2" or 2 -> 2.0, "1Gi" -> 1073741824.0, and
    every other form Kubernetes reads (".5", "1e3", "+2"), as the kubernetes client parses them."""
    try:
        return float(parse_quantity(quantity))  # type: ignore[no-untyped-call]  # the client has no types
    except ValueError as exc:
        raise ValueError(f"not a quantity: {quantity!r}") from exc


def cpu_cores(quantity: int | str) -> float:
    """A Kubernetes CPU quantity in cores: "500m" -> 0.5, "2" or 2 -> 2.0."""
    return quantity_value(quantity)


def llamacpp_settings(spec: H2oGPTDeploymentSpec) -> LlamaCppSpec:
    return spec.inference.llamacpp or LlamaCppSpec()


def llamacpp_resources(spec: H2oGPTDeploymentSpec) -> Manifest:
    """The llama.cpp container's resources: the spec's, or a small default request when it sets none."""
    resources = spec.inference.resources
    if resources.requests or resources.limits:
        return _resources(resources)
    return {"requests": dict(LLAMACPP_DEFAULT_REQUESTS)}


def llamacpp_threads(spec: H2oGPTDeploymentSpec) -> int | None:
    """`threads`, else the CPU limit, else the CPU request, rounded up; None: no CPU sizing at all.

    llama-cpp-python's own default counts the node's cores (half for generation, all for prompts),
    not the pod's: on a large node a 1-core pod would run dozens of threads that fight for it.
    """
    explicit = llamacpp_settings(spec).threads
    if explicit is not None:
        return explicit
    resources = llamacpp_resources(spec)
    cpu = resources.get("limits", {}).get("cpu", resources.get("requests", {}).get("cpu"))
    if cpu is None:
        return None
    return max(1, math.ceil(cpu_cores(cpu)))


def _llamacpp_args(spec: H2oGPTDeploymentSpec) -> list[str]:
    """`python3 -m llama_cpp.server` flags (its pydantic settings' field names)."""
    threads = llamacpp_threads(spec)
    args = [
        "--model", llamacpp_settings(spec).model_path,
        # The name /v1/models lists and requests carry: the api pods send `model.name` (--base_model).
        "--model_alias", spec.model.name,
        "--n_ctx", str(spec.model.max_seq_len),
        "--host", "0.0.0.0",
        "--port", str(naming.INFERENCE_PORTS["llamacpp"]),
        # By default a request waiting for the model ends the one generating with an early [DONE]:
        # parallel Summarize calls, or two users, would get truncated answers. Queue them instead.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    if threads is not None:
        args += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    return args + list(spec.inference.extra_args)


def _inference_args(spec: H2oGPTDeploymentSpec) -> list[str]:
    """The inference container's args; `extraArgs` come last, so a repeated flag overrides ours."""
    if spec.inference.engine == "llamacpp":
        return _llamacpp_args(spec)
    return _gpu_engine_args(spec)


def inference_request_summary(spec: H2oGPTDeploymentSpec) -> str | None:
    """What one inference pod asks the scheduler for, for a message about a pod that cannot be placed."""
    inference = spec.inference
    if inference.engine in GPU_ENGINES:
        return f"{inference.gpus} {inference.gpu_resource_name}" if inference.gpus else None
    resources = llamacpp_resources(spec)
    # What the scheduler counts: the requests, where a limit stands in for a request not given.
    asked = {**resources.get("limits", {}), **resources.get("requests", {})}
    return ", ".join(f"{name} {value}" for name, value in sorted(asked.items())) or None


def build_model_cache_pvc(stack: Stack, spec: H2oGPTDeploymentSpec) -> Manifest | None:
    """The Hugging Face cache of TGI/vLLM; llama.cpp serves a GGUF from its image and needs none."""
    cache = spec.inference.model_cache
    if not _downloads_model(spec) or not cache.enabled:
        return None
    pvc_spec: Manifest = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        pvc_spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(stack, naming.MODEL_CACHE),
        "spec": pvc_spec,
    }


def _gpu_engine_pod_spec(stack: Stack, spec: H2oGPTDeploymentSpec, config: OperatorConfig) -> Manifest:
    """TGI or vLLM: GPUs, the model cache at /data, a large /dev/shm."""
    inference = spec.inference
    engine = inference.engine
    env: list[Manifest] = []
    if spec.model.hf_token_secret_ref:
        env.append(_secret_env("HF_TOKEN", spec.model.hf_token_secret_ref, HF_TOKEN_KEY))
    env.append({"name": "HF_HOME", "value": "/data"})
    env.extend(_GPU_ENGINE_ENV)
    env.extend(inference.env)
    health = {"httpGet": {"path": "/health", "port": "http"}}
    container: Manifest = {
        "name": engine,
        "image": inference.image or (config.images.tgi if engine == "tgi" else config.images.vllm),
        "args": _inference_args(spec),
        "env": env,
        "ports": [{"name": "http", "containerPort": naming.INFERENCE_PORTS[engine], "protocol": "TCP"}],
        "readinessProbe": {**health, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 30, "failureThreshold": 6, "timeoutSeconds": 10},
        # Downloading and loading a large model takes a long time: allow 60 minutes before liveness counts.
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": 360},
        "resources": _resources(inference.resources, {inference.gpu_resource_name: inference.gpus}),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": "/data"},
            {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108 - NCCL needs a large shared memory,
            _TMP_MOUNT,
        ],
        "securityContext": _GPU_ENGINE_CONTAINER,
    }
    cache_volume: Manifest = (
        {
            "name": "model-cache",
            "persistentVolumeClaim": {"claimName": naming.child_name(stack.name, naming.MODEL_CACHE)},
        }
        if inference.model_cache.enabled
        else {"name": "model-cache", "emptyDir": {}}
    )
    return {
        # OnRootMismatch: a model cache of hundreds of GB is re-owned once, not on every start.
        "securityContext": {**_RESTRICTED_POD, "fsGroupChangePolicy": "OnRootMismatch"},
        "containers": [container],
        "volumes": [
            cache_volume,
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": inference.shm_size}},
            _TMP_VOLUME,
        ],
        # GPU nodes are commonly tainted with the GPU resource name; tolerating it is harmless elsewhere.
        "tolerations": [
            {"key": inference.gpu_resource_name, "operator": "Exists", "effect": "NoSchedule"},
            *inference.tolerations,
        ],
    }


def _llamacpp_pod_spec(spec: H2oGPTDeploymentSpec, config: OperatorConfig) -> Manifest:
    """llama-cpp-python's server on CPU: the GGUF is in the image, so no cache volume, no GPU, no HF token.

    Probes use GET /openapi.json: the server has no /health, and its /v1/models waits for the model
    lock, i.e. for any generation in progress to end (a probe would time out under load). The port
    opens only once the model is loaded, and /openapi.json answers from the event loop, which stays
    free while llama.cpp generates in a worker thread.
    """
    inference = spec.inference
    ready = {"httpGet": {"path": "/openapi.json", "port": "http"}}
    container: Manifest = {
        "name": "llamacpp",
        "image": inference.image or config.images.llamacpp,
        "args": _inference_args(spec),
        "ports": [{"name": "http", "containerPort": naming.INFERENCE_PORTS["llamacpp"], "protocol": "TCP"}],
        "readinessProbe": {**ready, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**ready, "periodSeconds": 30, "failureThreshold": 6, "timeoutSeconds": 10},
        # Loading maps the GGUF from the image: seconds for the default model, minutes for a large
        # one on a slow disk. Allow 10 minutes before liveness counts.
        "startupProbe": {**ready, "periodSeconds": 5, "failureThreshold": 120},
        "resources": llamacpp_resources(spec),
        "volumeMounts": [_TMP_MOUNT],
        "securityContext": _RESTRICTED_CONTAINER,
    }
    if inference.env:
        container["env"] = list(inference.env)
    pod_spec: Manifest = {
        "securityContext": _RESTRICTED_POD,
        "containers": [container],
        "volumes": [_TMP_VOLUME],
    }
    if inference.tolerations:
        pod_spec["tolerations"] = list(inference.tolerations)
    return pod_spec


def inference_grace_seconds(spec: H2oGPTDeploymentSpec) -> int | None:
    """The inference pods' terminationGracePeriodSeconds; None leaves Kubernetes' 30 s.

    The llama.cpp image finishes the answers in flight when stopped, so it gets the time an api pod
    gives them. TGI and vLLM keep Kubernetes' default unless set: writing one into their template
    would make an operator upgrade restart every GPU pod (Recreate: the model loads again).
    """
    explicit = spec.inference.termination_grace_period_seconds
    if explicit is not None:
        return explicit
    return ANSWER_GRACE_S if spec.inference.engine == "llamacpp" else None


def build_inference_deployment(
    stack: Stack,
    spec: H2oGPTDeploymentSpec,
    config: OperatorConfig,
    secret_digests: SecretDigests = NO_SECRETS,
    decided_replicas: int | None = None,
) -> Manifest | None:
    if not _runs_inference(spec):
        return None
    inference = spec.inference
    strategy: Manifest
    if inference.engine == "llamacpp":
        pod_spec = _llamacpp_pod_spec(spec, config)
        # No GPU to free and no RWO volume to hand over: start the new pod before the old one goes.
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    else:
        pod_spec = _gpu_engine_pod_spec(stack, spec, config)
        # A new GPU pod cannot start beside the old one when the GPUs are taken, nor share a RWO cache.
        strategy = {"type": "Recreate"}
    if inference.node_selector:
        pod_spec["nodeSelector"] = dict(inference.node_selector)
    if inference.affinity:
        pod_spec["affinity"] = inference.affinity
    if inference.runtime_class_name:
        pod_spec["runtimeClassName"] = inference.runtime_class_name
    if (grace := inference_grace_seconds(spec)) is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    # The template holds every inference setting; hashing it (not the replica count) marks a real change.
    # The HF token (and any Secret in `inference.env`) is read at start: its digest rolls the pods too.
    parts: list[Mapping[str, Any]] = [pod_spec["containers"][0], pod_spec]
    if secrets_read := secrets_read_digest(pod_spec, secret_digests):
        parts.append(secrets_read)
    checksum = settings_checksum(*parts)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(stack, naming.INFERENCE),
        "spec": {
            "replicas": inference_replicas(spec, decided_replicas),
            "strategy": strategy,
            "selector": {"matchLabels": naming.selector_labels(stack.name, naming.INFERENCE)},
            "template": {
                "metadata": {
                    "labels": naming.labels(stack.name, naming.INFERENCE),
                    "annotations": {naming.CHECKSUM_ANNOTATION: checksum},
                },
                "spec": pod_spec,
            },
        },
    }


def build_inference_service(stack: Stack, spec: H2oGPTDeploymentSpec) -> Manifest | None:
    if not _runs_inference(spec):
        return None
    port = naming.INFERENCE_PORTS[spec.inference.engine]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(stack, naming.INFERENCE),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector_labels(stack.name, naming.INFERENCE),
            "ports": [{"name": INFERENCE_PORT_NAME, "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


# --- Weaviate ------------------------------------------------------------------------------------------


def _weaviate_headless_name(stack: Stack) -> str:
    return naming.child_name(stack.name, f"{naming.WEAVIATE}-headless")


def weaviate_replication_factor(replicas: int) -> int:
    """Copies of each shard: every pod up to three. Three already survive losing any one pod at
    quorum; more copies would only multiply the writes of a larger cluster, whose extra pods
    hold other tenants' shards instead."""
    return min(replicas, 3)


def build_weaviate_statefulset(
    stack: Stack,
    spec: H2oGPTDeploymentSpec,
    config: OperatorConfig,
    secret_digests: SecretDigests = NO_SECRETS,
) -> Manifest | None:
    if not runs_weaviate(spec):
        return None
    retrieval = spec.retrieval
    name = naming.child_name(stack.name, naming.WEAVIATE)
    key_ref = weaviate_key_ref(stack, spec)
    if key_ref is None:  # runs_weaviate() implies a referenced or generated key
        raise ValueError("an in-cluster Weaviate needs an API key")
    peers = ",".join(f"{name}-{index}" for index in range(retrieval.replicas))
    env: list[Manifest] = [
        {"name": "CLUSTER_HOSTNAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "CLUSTER_JOIN", "value": f"{_weaviate_headless_name(stack)}.{stack.namespace}.svc"},
        {"name": "RAFT_JOIN", "value": peers},
        {"name": "RAFT_BOOTSTRAP_EXPECT", "value": str(retrieval.replicas)},
        # Every collection (documents, MyData tenants, logins) keeps this many copies, so losing a
        # pod loses nothing and, from 3 up, reads and writes (at quorum) go on meanwhile.
        {"name": "REPLICATION_MINIMUM_FACTOR", "value": str(weaviate_replication_factor(retrieval.replicas))},
        {"name": "PERSISTENCE_DATA_PATH", "value": WEAVIATE_DATA_DIR},
        {"name": "DEFAULT_VECTORIZER_MODULE", "value": "none"},
        {"name": "DISABLE_TELEMETRY", "value": "true"},
        {"name": "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED", "value": "false"},
        {"name": "AUTHENTICATION_APIKEY_ENABLED", "value": "true"},
        _secret_env("AUTHENTICATION_APIKEY_ALLOWED_KEYS", key_ref, WEAVIATE_API_KEY_KEY),
        {"name": "AUTHENTICATION_APIKEY_USERS", "value": WEAVIATE_USER},
        {"name": "PROMETHEUS_MONITORING_ENABLED", "value": "true"},
    ]
    container: Manifest = {
        "name": "weaviate",
        "image": retrieval.image or config.images.weaviate,
        "args": ["--host", "0.0.0.0", "--port", str(naming.WEAVIATE_HTTP_PORT), "--scheme", "http"],
        "env": env,
        "ports": [
            {"name": "http", "containerPort": naming.WEAVIATE_HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": naming.WEAVIATE_GRPC_PORT, "protocol": "TCP"},
            {"name": "gossip", "containerPort": 7000, "protocol": "TCP"},
            {"name": "data", "containerPort": 7001, "protocol": "TCP"},
            {"name": "raft", "containerPort": 8300, "protocol": "TCP"},
            {"name": "raft-rpc", "containerPort": 8301, "protocol": "TCP"},
            {"name": "metrics", "containerPort": naming.WEAVIATE_METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/v1/.well-known/ready", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/v1/.well-known/live", "port": "http"},
            "initialDelaySeconds": 60,
            "periodSeconds": 15,
        },
        "resources": _resources(retrieval.resources),
        "volumeMounts": [{"name": "data", "mountPath": WEAVIATE_DATA_DIR}, _TMP_MOUNT],
        "securityContext": _RESTRICTED_CONTAINER,
    }
    claim_spec: Manifest = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": retrieval.storage.size}},
    }
    if retrieval.storage.storage_class_name:
        claim_spec["storageClassName"] = retrieval.storage.storage_class_name
    when_deleted = "Delete" if retrieval.storage.delete_with_cr else "Retain"
    checksum = settings_checksum(container, secrets_read_digest({"containers": [container]}, secret_digests))
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(stack, naming.WEAVIATE),
        "spec": {
            "replicas": retrieval.replicas,
            "serviceName": _weaviate_headless_name(stack),
            # Raft bootstraps only when all expected peers start together.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": naming.selector_labels(stack.name, naming.WEAVIATE)},
            # Documents outlive the CR unless the spec says otherwise.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": when_deleted, "whenScaled": "Retain"},
            "template": {
                "metadata": {
                    "labels": naming.labels(stack.name, naming.WEAVIATE),
                    "annotations": {naming.CHECKSUM_ANNOTATION: checksum},
                },
                "spec": {
                    # OnRootMismatch: re-own a large data volume once (e.g. from an older fsGroup),
                    # not on every start.
                    "securityContext": {**_RESTRICTED_POD, "fsGroupChangePolicy": "OnRootMismatch"},
                    "containers": [container],
                    "volumes": [_TMP_VOLUME],
                },
            },
            "volumeClaimTemplates": [
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "data", "labels": naming.labels(stack.name, naming.WEAVIATE)},
                    "spec": claim_spec,
                }
            ],
        },
    }


def build_weaviate_services(stack: Stack, spec: H2oGPTDeploymentSpec) -> list[Manifest]:
    """A ClusterIP Service for clients (REST + gRPC) and a headless one for the peers' gossip."""
    if not runs_weaviate(spec):
        return []
    selector = naming.selector_labels(stack.name, naming.WEAVIATE)
    client = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(stack, naming.WEAVIATE),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": naming.WEAVIATE_HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": naming.WEAVIATE_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                # Weaviate's own Prometheus metrics (PROMETHEUS_MONITORING_ENABLED), for the ServiceMonitor.
                {
                    "name": "metrics",
                    "port": naming.WEAVIATE_METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(stack, naming.WEAVIATE, name=_weaviate_headless_name(stack)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [
                {"name": "gossip", "port": 7000, "targetPort": "gossip", "protocol": "TCP"},
                {"name": "data", "port": 7001, "targetPort": "data", "protocol": "TCP"},
                {"name": "raft", "port": 8300, "targetPort": "raft", "protocol": "TCP"},
                {"name": "raft-rpc", "port": 8301, "targetPort": "raft-rpc", "protocol": "TCP"},
            ],
        },
    }
    return [client, headless]


# --- API pods (Gradio and OpenAI: one image, two entry points) -------------------------------------------


def _api_component(spec: H2oGPTDeploymentSpec, component: str) -> ApiComponentSpec:
    return spec.frontend if component == naming.GRADIO else spec.openai


def openai_workers(spec: H2oGPTDeploymentSpec) -> int:
    """`openai.workers`, else the pod's CPU limit, else its CPU request, in whole cores, no more than its
    memory limit holds at API_WORKER_MEMORY_MIB each (at least 1); 1 while per-key limits are set.
    Rounded down: each process is an event loop that keeps a core busy under load, and two loops
    sharing one core's quota both stall when the quota runs out."""
    if spec.openai.workers is not None:
        return spec.openai.workers
    if spec.auth.limits.any_set:
        return 1
    resources = spec.openai.resources
    cpu = resources.limits.get("cpu", resources.requests.get("cpu"))
    workers = 1 if cpu is None else max(1, math.floor(cpu_cores(cpu)))
    memory = resources.limits.get("memory")
    if memory is not None:
        workers = min(workers, max(1, math.floor(quantity_value(memory) / (API_WORKER_MEMORY_MIB * 2**20))))
    return workers


def api_env(stack: Stack, spec: H2oGPTDeploymentSpec) -> list[Manifest]:
    """Credentials of the api pods, each from a Secret (the ConfigMap holds everything else)."""
    env = [_secret_env("H2OGPT_H2OGPT_API_KEYS", api_keys_ref(stack, spec), API_KEYS_KEY)]
    if spec.auth.users_secret_ref:
        env.append(_secret_env("H2OGPT_AUTH", spec.auth.users_secret_ref, USERS_KEY))
    key_ref = weaviate_key_ref(stack, spec) if spec.retrieval.enabled else None
    if key_ref:
        env.append(_secret_env("WEAVIATE_API_KEY", key_ref, WEAVIATE_API_KEY_KEY))
    external = spec.inference.external if spec.inference.engine == "external" else None
    if external and external.api_key_secret_ref:
        env.append(_secret_env("OPENAI_API_KEY", external.api_key_secret_ref, OPENAI_API_KEY_KEY))
    return env


def build_api_deployment(
    stack: Stack,
    spec: H2oGPTDeploymentSpec,
    component: str,
    config: OperatorConfig,
    secret_digests: SecretDigests = NO_SECRETS,
) -> Manifest | None:
    """`<cr>-openai` (h2ogpt-api --gradio False) or `<cr>-gradio` (h2ogpt-api --openai_server False)."""
    settings = _api_component(spec, component)
    if not settings.enabled:
        return None
    if component == naming.OPENAI:
        port, args = naming.OPENAI_PORT, ["--gradio", "False"]
        if (workers := openai_workers(spec)) > 1:
            args += ["--workers", str(workers)]
    else:
        port, args = naming.GRADIO_PORT, ["--openai_server", "False"]
    args += ["--drain_seconds", str(API_DRAIN_S)]
    health = {"httpGet": {"path": "/health", "port": "http"}}
    container: Manifest = {
        "name": "api",
        "image": settings.image or config.images.api,
        "command": ["h2ogpt-api"],
        "args": args,
        "envFrom": [{"configMapRef": {"name": naming.child_name(stack.name, naming.CONFIG)}}],
        "env": api_env(stack, spec),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {**health, "periodSeconds": 5},
        # Liveness only once started: start-up may wait API_WEAVIATE_WAIT_S for Weaviate (and /health says
        # "starting" until every --workers process serves), which liveness alone would cut short.
        "startupProbe": {**health, "periodSeconds": 5, "failureThreshold": API_STARTUP_PROBES},
        "livenessProbe": {**health, "initialDelaySeconds": 30, "periodSeconds": 20, "failureThreshold": 6},
        "resources": _resources(settings.resources),
        # The save dir (uploads) and /tmp (Gradio's uploads and caches) are the only writable paths.
        "volumeMounts": [{"name": "save", "mountPath": API_SAVE_DIR}, _TMP_MOUNT],
        "securityContext": _RESTRICTED_CONTAINER,
    }
    # Pods read the settings and their Secrets' keys once at start: a change to what they consume must
    # roll them, and only them.
    checksum = settings_checksum(
        build_settings(stack, spec), secrets_read_digest({"containers": [container]}, secret_digests)
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(stack, component),
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": naming.selector_labels(stack.name, component)},
            "template": {
                "metadata": {
                    "labels": naming.labels(stack.name, component),
                    "annotations": {naming.CHECKSUM_ANNOTATION: checksum},
                },
                "spec": {
                    **api_service_account(stack, spec),
                    "securityContext": _RESTRICTED_POD,
                    # After the drain h2ogpt-api waits for its answers with no limit of its own.
                    "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
                    "containers": [container],
                    "volumes": [{"name": "save", "emptyDir": {}}, _TMP_VOLUME],
                },
            },
        },
    }


def api_service_account(stack: Stack, spec: H2oGPTDeploymentSpec) -> Manifest:
    """The api pods' identity: `<cr>-api`, its token mounted, when they watch EndpointSlices or renew the
    demand Lease; else nothing set (the pod spec stays as it was before routing existed)."""
    if not api_rules(stack, spec):
        return {}
    account = naming.child_name(stack.name, naming.API)
    return {
        "serviceAccountName": account,
        # The deprecated alias too: the apiserver copies it into serviceAccountName when that is absent,
        # so if we did not own it, server-side apply could never take the ServiceAccount away again
        # (seen on the control plane: the name stayed after the stack went back to one replica).
        "serviceAccount": account,
        "automountServiceAccountToken": True,
    }


# Read-only, one resource: the API's EndpointSliceWatcher lists, then watches; `get` completes the read
# verbs (a client library may fetch one slice) and grants nothing a list does not already show.
ENDPOINTSLICE_READER_RULES: list[Manifest] = [
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
]


def demand_lease_rules(stack: Stack) -> list[Manifest]:
    """Renew the stack's own demand Lease, by name: no other Lease (leader elections, node heartbeats)."""
    lease = naming.child_name(stack.name, naming.DEMAND)
    return [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease],
            "verbs": ["patch"],
        }
    ]


def api_rules(stack: Stack, spec: H2oGPTDeploymentSpec) -> list[Manifest]:
    """What the api pods' token may do: watch the inference EndpointSlices where they route across
    replicas, renew the demand Lease where the autoscaler can add replicas; nothing otherwise."""
    rules: list[Manifest] = []
    if routes_across_replicas(spec):
        rules += ENDPOINTSLICE_READER_RULES
    if signals_demand(spec):
        rules += demand_lease_rules(stack)
    return rules


def build_api_rbac(stack: Stack, spec: H2oGPTDeploymentSpec) -> list[Manifest]:
    """ServiceAccount, Role and RoleBinding `<cr>-api` for the api pods' EndpointSlice watch and demand
    Lease (`api_rules`); none when they need neither. The Role is namespaced: the token reads this
    namespace's slices (other stacks' included: they hold pod addresses, no secret) and writes one Lease."""
    rules = api_rules(stack, spec)
    if not rules:
        return []
    name = naming.child_name(stack.name, naming.API)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(stack, naming.API)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(stack, naming.API),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(stack, naming.API),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": stack.namespace}],
        },
    ]


def build_api_service(stack: Stack, spec: H2oGPTDeploymentSpec, component: str) -> Manifest | None:
    settings = _api_component(spec, component)
    if not settings.enabled:
        return None
    default_port = naming.OPENAI_PORT if component == naming.OPENAI else naming.GRADIO_PORT
    service_spec: Manifest = {
        "type": settings.service.type,
        "selector": naming.selector_labels(stack.name, component),
        "ports": [
            {
                "name": "http",
                "port": settings.service.port or default_port,
                "targetPort": "http",
                "protocol": "TCP",
            }
        ],
    }
    # Gradio keeps a session's queue and uploads in one process: pin a client to one pod.
    if component == naming.GRADIO and settings.replicas > 1:
        service_spec["sessionAffinity"] = "ClientIP"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(stack, component),
        "spec": service_spec,
    }


def build_service_monitor(stack: Stack, spec: H2oGPTDeploymentSpec) -> Manifest | None:
    monitor = spec.monitoring.service_monitor
    if not monitor.enabled:
        return None
    metadata = _metadata(stack, "metrics")
    metadata["labels"] = {**monitor.labels, **metadata["labels"]}
    # TGI and vLLM serve /metrics; llama-cpp-python's server does not (a scrape would only 404).
    # Weaviate serves its metrics on their own port: scraped there, never on its REST port.
    scraped = [naming.OPENAI, naming.GRADIO, naming.WEAVIATE]
    if spec.inference.engine in GPU_ENGINES:
        scraped.insert(0, naming.INFERENCE)
    not_weaviate = {
        "action": "drop",
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
        "regex": naming.WEAVIATE,
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "h2ogpt",
                    "app.kubernetes.io/instance": stack.name,
                },
                "matchExpressions": [
                    {
                        "key": "app.kubernetes.io/component",
                        "operator": "In",
                        "values": scraped,
                    }
                ],
            },
            "endpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "interval": monitor.interval,
                    "relabelings": [not_weaviate],
                },
                {"port": "metrics", "path": "/metrics", "interval": monitor.interval},
            ],
        },
    }


# --- NetworkPolicies -----------------------------------------------------------------------------------


def _peers(peers: list[NetworkPolicyPeer]) -> list[Manifest]:
    return [peer.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True) for peer in peers]


def _tcp(*ports: int) -> list[Manifest]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _stack_pods(stack: Stack, components: list[str]) -> Manifest:
    """A podSelector for some components of this stack (labels a pod of another stack cannot carry)."""
    return {
        "matchLabels": {"app.kubernetes.io/name": "h2ogpt", "app.kubernetes.io/instance": stack.name},
        "matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "In", "values": components}],
    }


def _network_policy(stack: Stack, component: str, pods: Manifest, ingress: list[Manifest]) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(stack, component),
        # Ingress only: the pods' own calls out (model downloads, an external server) stay as they are.
        "spec": {"podSelector": pods, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def build_network_policies(stack: Stack, spec: H2oGPTDeploymentSpec) -> list[Manifest]:
    """One NetworkPolicy per component kind: the inference server and Weaviate admit this stack's API pods
    only (Weaviate also its own peers); the API pods admit `networkPolicy.apiFrom` on their ports.

    A pod selected by a policy refuses every ingress the policy does not list, so an empty `ingress`
    would cut a component off; a rule without `from` admits any source on its ports.
    """
    policy = spec.network_policy
    if not policy.enabled:
        return []
    api_pods = {"podSelector": _stack_pods(stack, [naming.OPENAI, naming.GRADIO])}
    policies: list[Manifest] = []
    if _runs_inference(spec):
        port = naming.INFERENCE_PORTS[spec.inference.engine]
        ingress = [{"from": [api_pods], "ports": _tcp(port)}]
        if policy.metrics_from:
            ingress.append({"from": _peers(policy.metrics_from), "ports": _tcp(port)})
        policies.append(
            _network_policy(stack, naming.INFERENCE, _stack_pods(stack, [naming.INFERENCE]), ingress)
        )
    if runs_weaviate(spec):
        weaviate_pods = _stack_pods(stack, [naming.WEAVIATE])
        ingress = [
            {"from": [api_pods], "ports": _tcp(naming.WEAVIATE_HTTP_PORT, naming.WEAVIATE_GRPC_PORT)},
            # Replicas gossip (memberlist: TCP and UDP), copy data and run Raft among themselves: any port.
            {"from": [{"podSelector": weaviate_pods}]},
        ]
        if policy.metrics_from:  # Weaviate's own metrics, on the port the ServiceMonitor scrapes
            ingress.append({"from": _peers(policy.metrics_from), "ports": _tcp(naming.WEAVIATE_METRICS_PORT)})
        policies.append(_network_policy(stack, naming.WEAVIATE, weaviate_pods, ingress))
    components = [c for c in (naming.OPENAI, naming.GRADIO) if _api_component(spec, c).enabled]
    if components:
        ports = [naming.OPENAI_PORT if c == naming.OPENAI else naming.GRADIO_PORT for c in components]
        rule: Manifest = {"ports": _tcp(*ports)}
        if policy.api_from:
            rule["from"] = _peers(policy.api_from)
        policies.append(_network_policy(stack, naming.API, _stack_pods(stack, components), [rule]))
    return policies


# --- everything ----------------------------------------------------------------------------------------


def build_children(
    stack: Stack,
    spec: H2oGPTDeploymentSpec,
    config: OperatorConfig,
    secret_digests: SecretDigests,
    decided_replicas: int | None = None,
) -> list[Manifest]:
    """Every child the reconciler server-side applies, in apply order (config before its consumers).

    `secret_digests`: digests of the namespace's Secrets' values (the generated `<cr>-auth` and the
    ones the spec references): each pod template's checksum covers the keys its pods read, so a
    rotated key rolls them. The generated Secret itself is created once, elsewhere.
    `decided_replicas`: the autoscaler's last decision (`inference_replicas`).
    """
    candidates: list[Manifest | None] = [
        build_config_map(stack, spec),
        build_model_cache_pvc(stack, spec),
        build_inference_service(stack, spec),
        build_inference_deployment(stack, spec, config, secret_digests, decided_replicas),
        *build_weaviate_services(stack, spec),
        build_weaviate_statefulset(stack, spec, config, secret_digests),
        # Before the api Deployments: their pods name the ServiceAccount (and renew the Lease).
        *build_api_rbac(stack, spec),
        build_demand_lease(stack, spec),
        build_api_service(stack, spec, naming.OPENAI),
        build_api_deployment(stack, spec, naming.OPENAI, config, secret_digests),
        build_api_service(stack, spec, naming.GRADIO),
        build_api_deployment(stack, spec, naming.GRADIO, config, secret_digests),
        build_service_monitor(stack, spec),
        *build_network_policies(stack, spec),
    ]
    return [child for child in candidates if child is not None]


def workload_secrets(children: list[Manifest]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(kind, name) of each Deployment/StatefulSet -> the (Secret, key) pairs its pods read."""
    return {
        (child["kind"], child["metadata"]["name"]): secret_keys_read(child["spec"]["template"]["spec"])
        for child in children
        if child["kind"] in ("Deployment", "StatefulSet")
    }


def kept_with_cr(manifest: Manifest, spec: H2oGPTDeploymentSpec) -> bool:
    """True for a child that must outlive the CR (no ownerReference): the model cache unless deleteWithCR."""
    return manifest["kind"] == "PersistentVolumeClaim" and not spec.inference.model_cache.delete_with_cr
