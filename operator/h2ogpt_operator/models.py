"""The H2oGPTDeployment spec and status as pydantic models.

These models are the single source of the CRD schema (`crd.py` turns them into a structural
OpenAPI schema) and of the operator's parsing of a CR. Rules that tie one field to another are
written twice on purpose: as CEL (`x-kubernetes-validations`, enforced by the apiserver at
`kubectl apply`) and as a pydantic validator (so the operator never acts on a CR that slipped
past an older CRD).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "h2ogpt.dev"
VERSION = "v1alpha1"
KIND = "H2oGPTDeployment"
PLURAL = "h2ogptdeployments"
SINGULAR = "h2ogptdeployment"
SHORT_NAME = "h2ogpt"

# Kubernetes' own quantity grammar (apimachinery's resource.Quantity), without a sign of minus: what a
# pod's resources take, so a value copied from a pod spec is accepted as it is ("500m", ".5", "1e3").
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
CIDR_PATTERN = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
Cidr = Annotated[str, Field(pattern=CIDR_PATTERN, max_length=64)]

Engine = Literal["tgi", "vllm", "llamacpp", "external"]
# Engines that run on GPUs: `inference.gpus` (>= 1) is their GPU limit, TGI's shards, vLLM's TP size.
GPU_ENGINES: frozenset[str] = frozenset({"tgi", "vllm"})
# Engines the operator runs in the cluster (a Deployment + Service `<cr>-inference`).
IN_CLUSTER_ENGINES: frozenset[str] = frozenset({"tgi", "vllm", "llamacpp"})
ExternalType = Literal["openai", "vllm", "tgi"]
Quantize = Literal[
    "awq", "gptq", "eetq", "exl2", "marlin", "fp8", "bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4"
]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]


# Entries of the URL-ingestion lists: the apiserver refuses what cannot be a host, address or CIDR
# (no commas: the api pods read the list comma-separated); the api pods parse each entry fully.
URLHostEntry = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^((\*\.)?[A-Za-z0-9.-]+|[0-9A-Fa-f.:]+(/[0-9]{1,3})?|\[[0-9A-Fa-f:.]+\])$",
    ),
]
CIDREntry = Annotated[str, Field(min_length=2, max_length=49, pattern=r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$")]


class CrdModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are ignored (the apiserver prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


def section(model: type[BaseModel]) -> Any:
    """A nested object that is always present: `default: {}` lets the apiserver fill its defaults."""
    return Field(default_factory=model, json_schema_extra={"default": {}})


class SecretKeyRef(CrdModel):
    """A key in a Secret in the CR's namespace. `key` defaults per use (see docs/operator.md)."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    key: str | None = Field(default=None, min_length=1, max_length=253)


# A resource quantity as a number or a string QUANTITY_PATTERN reads ("500m", "2", "1.5Gi"): a typo is
# refused at kubectl apply with the field named, not when a pod is built from it.
Quantity = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=QUANTITY_PATTERN)]


class ResourceRequirements(CrdModel):
    """Kubernetes container resources; quantities as strings or numbers."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class ModelSpec(CrdModel):
    name: str = Field(min_length=1, max_length=256, description="Hugging Face model id, e.g. org/model.")
    revision: str | None = Field(default=None, min_length=1, max_length=128)
    max_seq_len: int = Field(default=4096, ge=128, le=1_048_576, description="Context length in tokens.")
    prompt_type: str = Field(default="", max_length=64)
    system_prompt: str = Field(
        default="auto",
        max_length=65_536,
        description="'auto' = the model's default system prompt; '' = none; anything else is used as is.",
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Hugging Face token for gated models (key default HF_TOKEN)."
    )


class ModelCacheSpec(CrdModel):
    enabled: bool = True
    size: str = Field(default="100Gi", pattern=QUANTITY_PATTERN)
    storage_class_name: str | None = Field(default=None, min_length=1)
    delete_with_cr: bool = Field(
        default=False, alias="deleteWithCR", description="Delete the cache PVC when the CR is deleted."
    )


class LlamaCppSpec(CrdModel):
    """llama-cpp-python's OpenAI-compatible server on CPU, serving one GGUF file from the image."""

    model_path: str = Field(
        default="/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        pattern=r"^/[^\s]+$",
        max_length=4096,
        description="Absolute path of the GGUF file inside the image (the default image ships this one).",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="CPU threads for generation and prompt processing. Default: the pod's CPU limit, "
        "else its CPU request, rounded up.",
    )


class ExternalInferenceSpec(CrdModel):
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048, description="Base URL of the server.")
    type: ExternalType = "openai"
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, description="Key default OPENAI_API_KEY.")


class AutoscalingSpec(CrdModel):
    """The operator sets the inference replicas from the API pods' load (docs/operator.md, "Autoscaling")."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                    "message": "inference.autoscaling.minReplicas must not be above maxReplicas",
                }
            ]
        }
    )

    min_replicas: int = Field(
        default=1, ge=0, le=64, description="Fewest inference replicas; 0 = scale to zero when idle."
    )
    max_replicas: int = Field(ge=1, le=64, description="Most inference replicas.")
    target_in_flight: int = Field(
        default=8, ge=1, le=10_000,
        description="Generation requests in flight per replica (running, waiting or held in the API pods) "
        "the autoscaler aims at.",
    )
    target_queue_size: int | None = Field(
        default=None, ge=1, le=10_000,
        description="Requests waiting inside the engine per replica (TGI tgi_queue_size, vLLM "
        "vllm:num_requests_waiting) above which it adds a replica; tgi and vllm only.",
    )
    scale_down_delay_seconds: int = Field(
        default=300, ge=0, le=86_400,
        description="Load must stay low this long before a replica is removed; only replicas no stream "
        "runs on are removed.",
    )
    hold_seconds: int = Field(
        default=300, ge=1, le=3600,
        description="How long the API pods hold a request while no inference replica is ready "
        "(then 503 with Retry-After); H2OGPT_HOLD_SECONDS.",
    )
    max_held: int = Field(
        default=256, ge=1, le=100_000,
        description="Requests the API pods hold at most, each; one more gets 503 at once (H2OGPT_MAX_HELD).",
    )

    @model_validator(mode="after")
    def _range(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("inference.autoscaling.minReplicas must not be above maxReplicas")
        return self


# A stopping api pod serves this long more, each answer closing its connection (h2ogpt_api.draining):
# kube-proxy drops the pod meanwhile, and keep-alive clients reconnect to a pod that stays instead of
# crossing the server's close of an idle connection.
API_DRAIN_S = 5
# How long, by default, the answers still streaming on a stopping pod get to finish: on an api pod
# after its drain, and on a llama.cpp pod (its image finishes them: images/llamacpp/serve.py).
ANSWER_GRACE_S = 120


class InferenceSpec(CrdModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # has(): the apiserver also checks these rules against the bare default `{}`.
                    "rule": "!has(self.engine) || self.engine != 'external' || has(self.external)",
                    "message": "inference.external.url is required when inference.engine is external",
                },
                {
                    # Only the GPU engines need GPUs; `gpus` is ignored for llamacpp and external.
                    "rule": (
                        "(has(self.engine) && self.engine in ['external', 'llamacpp']) "
                        "|| !has(self.gpus) || self.gpus > 0"
                    ),
                    "message": "inference.gpus must be at least 1 when inference.engine is tgi or vllm",
                },
                {
                    "rule": "!has(self.autoscaling) || !has(self.engine) || self.engine != 'external'",
                    "message": "inference.autoscaling needs an engine the operator runs "
                    "(tgi, vllm, llamacpp)",
                },
                {
                    "rule": (
                        "!has(self.autoscaling) || !has(self.autoscaling.targetQueueSize) "
                        "|| !has(self.engine) || self.engine in ['tgi', 'vllm']"
                    ),
                    "message": "inference.autoscaling.targetQueueSize needs an engine that exports its queue "
                    "(tgi, vllm)",
                },
            ]
        }
    )

    engine: Engine = "tgi"
    image: str | None = Field(default=None, min_length=1, description="Default: the operator's per engine.")
    replicas: int = Field(default=1, ge=0, le=64)
    gpus: int = Field(
        default=1, ge=0, le=64, description="GPUs per inference pod (TGI shards, vLLM TP); tgi and vllm only."
    )
    gpu_resource_name: str = Field(default="nvidia.com/gpu", min_length=1, max_length=253)
    resources: ResourceRequirements = section(ResourceRequirements)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    runtime_class_name: str | None = Field(default=None, min_length=1)
    quantize: Quantize | None = None
    extra_args: list[str] = Field(default_factory=list)
    env: list[dict[str, Any]] = Field(default_factory=list, description="Extra container env (EnvVar list).")
    shm_size: str = Field(default="1Gi", pattern=QUANTITY_PATTERN)
    model_cache: ModelCacheSpec = section(ModelCacheSpec)
    llamacpp: LlamaCppSpec | None = Field(
        default=None, description="Settings of the llamacpp engine (defaults apply when absent)."
    )
    external: ExternalInferenceSpec | None = None
    autoscaling: AutoscalingSpec | None = Field(
        default=None,
        description="Set the replicas from the load instead of `replicas` (which is then only the count "
        "at creation, kept within min and max).",
    )
    termination_grace_period_seconds: int | None = Field(
        default=None, ge=1, le=86_400,
        description="How long a stopping inference pod (a rollout, a scale-in, a node drain; not used with "
        "engine external) has to finish "
        "the answers it is streaming; what is left at this limit is cut. A pod with nothing in flight exits "
        f"at once. Default: {ANSWER_GRACE_S} for llamacpp, whose image finishes its answers; for tgi and "
        "vllm, Kubernetes' 30; TGI finishes its queue for up to 90 s when stopped, so set 100 or more "
        "there to let its longer answers finish.",
    )

    @model_validator(mode="after")
    def _engine_needs(self) -> InferenceSpec:
        if self.engine == "external" and self.external is None:
            raise ValueError("inference.external.url is required when inference.engine is external")
        if self.engine in GPU_ENGINES and self.gpus < 1:
            raise ValueError("inference.gpus must be at least 1 when inference.engine is tgi or vllm")
        if self.autoscaling is not None and self.engine not in IN_CLUSTER_ENGINES:
            raise ValueError("inference.autoscaling needs an engine the operator runs (tgi, vllm, llamacpp)")
        if (
            self.autoscaling is not None
            and self.autoscaling.target_queue_size is not None
            and self.engine not in GPU_ENGINES
        ):
            raise ValueError(
                "inference.autoscaling.targetQueueSize needs an engine that exports its queue (tgi, vllm)"
            )
        return self


class StorageSpec(CrdModel):
    size: str = Field(default="10Gi", pattern=QUANTITY_PATTERN)
    storage_class_name: str | None = Field(default=None, min_length=1)
    delete_with_cr: bool = Field(
        default=False, alias="deleteWithCR", description="Delete Weaviate's PVCs when the CR is deleted."
    )


# The one embedding model the api pods run in-process (numpy, weights from the image; h2ogpt_api's
# settings accept exactly these names): any other model needs `retrieval.embedding.server`, or the
# api pods refuse to start. The CEL rule below spells the same list.
IN_PROCESS_EMBEDDING_MODELS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


class EmbeddingSpec(CrdModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": (
                        "has(self.server) || !has(self.model) || self.model in "
                        "['sentence-transformers/all-MiniLM-L6-v2', 'all-MiniLM-L6-v2']"
                    ),
                    "message": "retrieval.embedding.server is required for a model other than "
                    "sentence-transformers/all-MiniLM-L6-v2 (the only one the api pods run in-process)",
                }
            ]
        }
    )

    model: str = Field(default="sentence-transformers/all-MiniLM-L6-v2", min_length=1, max_length=256)
    server: str | None = Field(
        default=None, pattern=r"^https?://[^\s]+$", description="OpenAI-compatible /v1/embeddings base URL."
    )

    @model_validator(mode="after")
    def _model_runs_somewhere(self) -> EmbeddingSpec:
        if self.server is None and self.model not in IN_PROCESS_EMBEDDING_MODELS:
            raise ValueError(
                "retrieval.embedding.server is required for a model other than "
                "sentence-transformers/all-MiniLM-L6-v2 (the only one the api pods run in-process)"
            )
        return self


class RetrievalSpec(CrdModel):
    # CEL only: a transition rule needs the old object, which the operator never sees.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": (
                        "!has(oldSelf.replicas) || !has(self.replicas) || self.replicas >= oldSelf.replicas"
                    ),
                    "message": "retrieval.replicas cannot be lowered: collections keep the replication "
                    "factor they were made with (up to 3), and fewer Weaviate pods than that lose quorum; "
                    "to shrink, back up the documents and recreate the stack",
                }
            ]
        }
    )

    enabled: bool = True
    image: str | None = Field(default=None, min_length=1)
    replicas: int = Field(default=1, ge=1, le=9)
    storage: StorageSpec = section(StorageSpec)
    resources: ResourceRequirements = section(ResourceRequirements)
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Weaviate API key (key default WEAVIATE_API_KEY); generated when absent."
    )
    external_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s]+$", description="Use this Weaviate instead of running one."
    )
    embedding: EmbeddingSpec = section(EmbeddingSpec)
    # URL ingestion (/add_url) fetches only public addresses; the api pods check every resolved
    # address and redirect. These open exceptions (an intranet wiki) or add refused ranges.
    allowed_url_hosts: list[URLHostEntry] = Field(
        default_factory=list,
        max_length=256,
        description="Host names (*.domain too), addresses or CIDRs that URL ingestion may fetch from "
        "besides public addresses (H2OGPT_ALLOWED_URL_HOSTS).",
    )
    blocked_url_cidrs: list[CIDREntry] = Field(
        default_factory=list,
        max_length=256,
        description="Ranges URL ingestion also refuses: the cluster's Service and Pod CIDRs when they are "
        "not private ranges, which are refused anyway (H2OGPT_BLOCKED_URL_CIDRS).",
    )


class ServiceSpec(CrdModel):
    type: ServiceType = "ClusterIP"
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Default 7860 (Gradio), 5000 (OpenAI)."
    )


class ApiComponentSpec(CrdModel):
    enabled: bool = True
    replicas: int = Field(default=1, ge=0, le=100)
    image: str | None = Field(default=None, min_length=1)
    resources: ResourceRequirements = section(ResourceRequirements)
    service: ServiceSpec = section(ServiceSpec)
    termination_grace_period_seconds: int = Field(
        default=API_DRAIN_S + ANSWER_GRACE_S, ge=API_DRAIN_S + 1, le=86_400,
        description=f"How long a stopping api pod (a rollout, a scale-in) has: {API_DRAIN_S} s of drain, "
        "then the answers still streaming finish, and what is left at this limit is cut. A pod with "
        "nothing in flight exits after the drain. Raise it for answers that take longer.",
    )


class OpenAIComponentSpec(ApiComponentSpec):
    workers: int | None = Field(
        default=None, ge=1, le=64,
        description="Processes serving the OpenAI port in each openai pod (h2ogpt-api --workers): one "
        "process uses about one core. Default: the pod's CPU limit, else its CPU request, in whole cores, "
        "no more than its memory limit holds at 400Mi each (at least 1), and 1 while per-key limits are set "
        "(auth.limits: each process would count its own).",
    )


class GenerationSpec(CrdModel):
    async_output: bool = True
    num_async: int = Field(default=3, ge=1, le=256)


# Each api pod counts on its own, so N replicas admit up to N times a limit: a shared counter would
# put a network round trip on every request (docs/security.md).
class LimitsSpec(CrdModel):
    """Per-key limits (--requests_per_minute, --tokens_per_minute), counted in each api pod per API key name, else per login; anonymous OpenAI callers share one budget, anonymous Gradio sessions have none."""  # noqa: E501 - one line: it is the CRD's description

    requests_per_minute: int = Field(
        default=0, ge=0, le=100_000_000,
        description="Requests per minute per API key or login in each api pod; 0 = no limit. Over it: 429 "
        "with Retry-After (OpenAI port), h2oGPT's error saying the wait (Gradio port).",
    )
    tokens_per_minute: int = Field(
        default=0, ge=0, le=10_000_000_000,
        description="Prompt + completion tokens per minute per API key or login in each api pod; "
        "0 = no limit.",
    )

    @property
    def any_set(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute)


class AuthSpec(CrdModel):
    access: Literal["open", "closed"] = "open"
    guest_name: str = Field(default="guest", min_length=1, max_length=128)
    enforce_api_key: bool = Field(default=True, description="Refuse OpenAI requests without a valid key.")
    api_keys_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Key (default H2OGPT_H2OGPT_API_KEYS) holding a list literal; generated when absent.",
    )
    users_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Key (default auth.json) holding users as h2oGPT's --auth takes them."
    )
    limits: LimitsSpec = section(LimitsSpec)


class ServiceMonitorSpec(CrdModel):
    enabled: bool = False
    interval: str = Field(default="30s", pattern=r"^[0-9]+(ms|s|m|h)$")
    labels: dict[str, str] = Field(default_factory=dict)


class MonitoringSpec(CrdModel):
    service_monitor: ServiceMonitorSpec = section(ServiceMonitorSpec)


class LabelSelectorRequirement(CrdModel):
    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(CrdModel):
    """A Kubernetes label selector; empty selects everything (in its scope)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class IPBlock(CrdModel):
    cidr: str = Field(pattern=CIDR_PATTERN, description="e.g. 10.0.0.0/8 or 2001:db8::/32")
    except_: list[Cidr] = Field(
        default_factory=list, alias="except", description="CIDRs inside `cidr` to leave out."
    )


class NetworkPolicyPeer(CrdModel):
    """A NetworkPolicy `from` entry: pods and/or namespaces by label, or an address block."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.ipBlock) != (has(self.podSelector) || has(self.namespaceSelector))",
                    "message": "a network policy source is either ipBlock or podSelector/namespaceSelector",
                }
            ]
        }
    )

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Without podSelector: every pod of the selected namespaces."
    )
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        selects = self.pod_selector is not None or self.namespace_selector is not None
        if (self.ip_block is not None) == selects:
            raise ValueError("a network policy source is either ipBlock or podSelector/namespaceSelector")
        return self


class NetworkPolicySpec(CrdModel):
    """Per-stack NetworkPolicies: Weaviate and the inference server admit only this stack's API pods."""

    enabled: bool = Field(default=True, description="Create the stack's NetworkPolicies.")
    api_from: list[NetworkPolicyPeer] = Field(
        default_factory=list,
        max_length=64,
        description="Sources allowed to reach the Gradio and OpenAI ports; empty = any source.",
    )
    metrics_from: list[NetworkPolicyPeer] = Field(
        default_factory=list,
        max_length=64,
        description="Sources (e.g. Prometheus's namespace) allowed to reach the inference port for /metrics "
        "as well; empty = none.",
    )


WORKERS_WITH_LIMITS = (
    "openai.workers above 1 cannot be combined with auth.limits: each process would count its own "
    "per-key limits, admitting workers times each"
)


class H2oGPTDeploymentSpec(CrdModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # has(): the apiserver also checks these rules where a section was left out.
                    "rule": (
                        "!has(self.openai) || !has(self.openai.workers) || self.openai.workers == 1 "
                        "|| !has(self.auth) || !has(self.auth.limits) "
                        "|| ((!has(self.auth.limits.requestsPerMinute) "
                        "|| self.auth.limits.requestsPerMinute == 0) "
                        "&& (!has(self.auth.limits.tokensPerMinute) "
                        "|| self.auth.limits.tokensPerMinute == 0))"
                    ),
                    "message": WORKERS_WITH_LIMITS,
                },
            ]
        }
    )

    model: ModelSpec
    inference: InferenceSpec = section(InferenceSpec)
    retrieval: RetrievalSpec = section(RetrievalSpec)
    frontend: ApiComponentSpec = section(ApiComponentSpec)
    openai: OpenAIComponentSpec = section(OpenAIComponentSpec)
    generation: GenerationSpec = section(GenerationSpec)
    auth: AuthSpec = section(AuthSpec)
    monitoring: MonitoringSpec = section(MonitoringSpec)
    network_policy: NetworkPolicySpec = section(NetworkPolicySpec)
    suspend: bool = Field(default=False, description="Scale the inference to zero; keep all data.")

    @model_validator(mode="after")
    def _one_worker_with_limits(self) -> H2oGPTDeploymentSpec:
        if self.auth.limits.any_set and (self.openai.workers or 1) > 1:
            raise ValueError(WORKERS_WITH_LIMITS)
        return self


class Condition(CrdModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    last_transition_time: str
    observed_generation: int


class Endpoints(CrdModel):
    openai: str | None = None
    gradio: str | None = None


class AutoscalingStatus(CrdModel):
    """The autoscaler's last decision (written only when it changes)."""

    desired_replicas: int
    current_replicas: int
    reason: str
    last_scale_time: str | None = None


class H2oGPTDeploymentStatus(CrdModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    endpoints: Endpoints | None = None
    autoscaling: AutoscalingStatus | None = None
