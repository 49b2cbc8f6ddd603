"""The status roll-up: a pure function from the children's observed state to the CR's status.

Each component condition says what is actually wrong, read from the objects Kubernetes already
has: a pod the scheduler cannot place (naming the GPUs, or for llama.cpp the CPU and memory, it
asks for), an image that cannot be pulled, a crash loop, a Secret that does not exist. `Ready` is
the conjunction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from h2ogpt_operator import builders, naming
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.models import H2oGPTDeploymentSpec

Manifest = dict[str, Any]

INFERENCE_READY = "InferenceReady"
RETRIEVAL_READY = "RetrievalReady"
FRONTEND_READY = "FrontendReady"
OPENAI_READY = "OpenAIReady"
MONITORING_READY = "MonitoringReady"
READY = "Ready"

_IMAGE_PULL_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """What the reconciler saw in the cluster for one CR."""

    generation: int
    workloads: Mapping[str, Manifest | None]  # component -> live Deployment/StatefulSet (None: absent)
    pods: Sequence[Manifest] = ()
    missing_secrets: Sequence[tuple[str, str]] = ()  # (spec path, Secret name)
    service_monitor_crd: bool = True
    apply_errors: Mapping[str, str] = field(default_factory=dict)  # component -> apiserver's refusal
    inference_replicas: int | None = None  # what the reconciler applied (autoscaled); None = spec's


# --- one component ---------------------------------------------------------------------------------------


def _pod_problem(pod: Manifest, request: str | None) -> Verdict | None:
    """The first thing that keeps this pod from being Ready, if Kubernetes has said what it is."""
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            asks = f" it requests {request};" if request else ""
            scheduler = condition.get("message") or "no reason given"
            return Verdict(
                False, "Unschedulable", f"no node can run pod {name}:{asks} scheduler: {scheduler}"
            )
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        detail = waiting.get("message") or ""
        if reason in _IMAGE_PULL_REASONS:
            image = container.get("image", "?")
            return Verdict(
                False,
                "ImagePullBackOff",
                f"image {image} of pod {name} cannot be pulled: {detail}".rstrip(": "),
            )
        if reason == "CrashLoopBackOff":
            last = (container.get("lastState") or {}).get("terminated") or {}
            exit_code = last.get("exitCode", "?")
            restarts = container.get("restartCount", 0)
            return Verdict(
                False,
                "CrashLoopBackOff",
                f"container {container.get('name')} of pod {name} is crash-looping "
                f"({restarts} restarts, last exit code {exit_code})",
            )
        if reason in {"CreateContainerConfigError", "CreateContainerError"}:
            return Verdict(False, reason, f"pod {name} cannot start: {detail}")
    return None


def _workload_verdict(
    kind: str, workload: Manifest | None, desired: int, pods: Sequence[Manifest], request: str | None
) -> Verdict:
    """`request`: what one pod asks the scheduler for ("1 nvidia.com/gpu"), named if it cannot be placed."""
    if workload is None:
        return Verdict(False, "NotCreated", f"the {kind} does not exist yet")
    name = workload["metadata"]["name"]
    status = workload.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    current_generation = int(status.get("observedGeneration") or 0) >= int(
        workload["metadata"].get("generation", 0)
    )
    if desired == 0:
        return Verdict(True, "ScaledToZero", f"{kind} {name} has 0 replicas")
    if current_generation and ready >= desired and _rolled_out(kind, status, desired):
        return Verdict(True, "Ready", f"{kind} {name}: {ready}/{desired} replicas ready")
    for pod in pods:
        problem = _pod_problem(pod, request)
        if problem is not None:
            return problem
    return Verdict(False, "Progressing", f"{kind} {name}: {ready}/{desired} replicas ready")


def _rolled_out(kind: str, status: Manifest, desired: int) -> bool:
    """Whether every pod is of the current template, as `kubectl rollout status` decides it.

    During a rollout `readyReplicas` still counts the old pods, so "ready >= desired" alone would call
    a stack Ready before its new pods have started; and while an old pod remains, clients can still be
    sent to it just as it is stopped.
    """
    if kind == "Deployment":
        updated = int(status.get("updatedReplicas") or 0)
        return updated >= desired and int(status.get("replicas") or 0) <= updated
    update_revision = status.get("updateRevision")
    return update_revision is None or status.get("currentRevision") == update_revision


def _missing_secret_verdict(
    missing: Sequence[tuple[str, str]], namespace: str, paths: set[str]
) -> Verdict | None:
    relevant = [(path, secret) for path, secret in missing if path in paths]
    if not relevant:
        return None
    named = ", ".join(f"Secret {secret!r} ({path})" for path, secret in relevant)
    return Verdict(False, "SecretMissing", f"{named} not found in namespace {namespace}")


_API_SECRET_PATHS = {
    "spec.auth.apiKeysSecretRef",
    "spec.auth.usersSecretRef",
    "spec.retrieval.apiKeySecretRef",
    "spec.inference.external.apiKeySecretRef",
}


def _component_pods(pods: Sequence[Manifest], component: str) -> list[Manifest]:
    return [p for p in pods if naming.component_of(p) == component]


def inference_verdict(stack: Stack, spec: H2oGPTDeploymentSpec, observed: Observed) -> Verdict:
    if spec.inference.engine == "external" and spec.inference.external is not None:
        return Verdict(True, "External", f"using the external server at {spec.inference.external.url}")
    if naming.INFERENCE in observed.apply_errors:
        return Verdict(False, "ApplyFailed", observed.apply_errors[naming.INFERENCE])
    missing = _missing_secret_verdict(
        observed.missing_secrets, stack.namespace, {"spec.model.hfTokenSecretRef"}
    )
    if missing:
        return missing
    if spec.suspend:
        return Verdict(False, "Suspended", "spec.suspend is true: the inference is scaled to zero")
    # Every in-cluster engine (tgi, vllm, llamacpp) is one Deployment; only what its pods ask differs.
    return _workload_verdict(
        "Deployment",
        observed.workloads.get(naming.INFERENCE),
        spec.inference.replicas if observed.inference_replicas is None else observed.inference_replicas,
        _component_pods(observed.pods, naming.INFERENCE),
        builders.inference_request_summary(spec),
    )


def retrieval_verdict(stack: Stack, spec: H2oGPTDeploymentSpec, observed: Observed) -> Verdict:
    if not spec.retrieval.enabled:
        return Verdict(True, "Disabled", "retrieval is disabled")
    if spec.retrieval.external_url:
        return Verdict(True, "External", f"using the external Weaviate at {spec.retrieval.external_url}")
    if naming.WEAVIATE in observed.apply_errors:
        return Verdict(False, "ApplyFailed", observed.apply_errors[naming.WEAVIATE])
    missing = _missing_secret_verdict(
        observed.missing_secrets, stack.namespace, {"spec.retrieval.apiKeySecretRef"}
    )
    if missing:
        return missing
    return _workload_verdict(
        "StatefulSet",
        observed.workloads.get(naming.WEAVIATE),
        spec.retrieval.replicas,
        _component_pods(observed.pods, naming.WEAVIATE),
        None,
    )


def api_verdict(stack: Stack, spec: H2oGPTDeploymentSpec, observed: Observed, component: str) -> Verdict:
    settings = spec.frontend if component == naming.GRADIO else spec.openai
    if not settings.enabled:
        return Verdict(True, "Disabled", f"the {component} component is disabled")
    if component in observed.apply_errors:
        return Verdict(False, "ApplyFailed", observed.apply_errors[component])
    missing = _missing_secret_verdict(observed.missing_secrets, stack.namespace, _API_SECRET_PATHS)
    if missing:
        return missing
    return _workload_verdict(
        "Deployment",
        observed.workloads.get(component),
        settings.replicas,
        _component_pods(observed.pods, component),
        None,
    )


def monitoring_verdict(spec: H2oGPTDeploymentSpec, observed: Observed) -> Verdict | None:
    if not spec.monitoring.service_monitor.enabled:
        return None
    if not observed.service_monitor_crd:
        return Verdict(
            False,
            "ServiceMonitorCRDMissing",
            "monitoring.serviceMonitor.enabled is true but the ServiceMonitor CRD (monitoring.coreos.com) "
            "is not installed",
        )
    return Verdict(True, "ServiceMonitorApplied", "ServiceMonitor applied")


# --- the whole status ------------------------------------------------------------------------------------


def _rolled_up(components: Mapping[str, Verdict], spec: H2oGPTDeploymentSpec) -> Verdict:
    failing = [(kind, v) for kind, v in components.items() if not v.ready]
    if not failing:
        return Verdict(True, "AllComponentsReady", "inference, retrieval, frontend and OpenAI API are ready")
    if spec.suspend and all(v.reason == "Suspended" for _, v in failing):
        return Verdict(False, "Suspended", "spec.suspend is true: the inference is scaled to zero")
    message = "; ".join(f"{kind}: {v.message}" for kind, v in failing)
    return Verdict(False, failing[0][1].reason, message)


def _condition(
    kind: str, verdict: Verdict, generation: int, previous: Mapping[str, Manifest], now: str
) -> Manifest:
    status = "True" if verdict.ready else "False"
    before = previous.get(kind)
    # Kubernetes convention: the transition time moves only when the status flips.
    since = before["lastTransitionTime"] if before and before.get("status") == status else now
    return {
        "type": kind,
        "status": status,
        "reason": verdict.reason,
        "message": verdict.message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def compute_status(
    stack: Stack,
    spec: H2oGPTDeploymentSpec,
    observed: Observed,
    previous_status: Mapping[str, Any] | None,
    now: str,
) -> Manifest:
    """The status the CR should have. Same inputs, same output (timestamps come from `previous` or `now`)."""
    components = {
        INFERENCE_READY: inference_verdict(stack, spec, observed),
        RETRIEVAL_READY: retrieval_verdict(stack, spec, observed),
        FRONTEND_READY: api_verdict(stack, spec, observed, naming.GRADIO),
        OPENAI_READY: api_verdict(stack, spec, observed, naming.OPENAI),
    }
    verdicts: dict[str, Verdict] = {READY: _rolled_up(components, spec), **components}
    monitoring = monitoring_verdict(spec, observed)
    if monitoring is not None:
        verdicts[MONITORING_READY] = (
            monitoring  # informative: a missing Prometheus does not make a stack unready
        )
    previous = {c.get("type", ""): c for c in (previous_status or {}).get("conditions") or []}
    endpoints: dict[str, str] = {}
    if spec.openai.enabled:
        endpoints["openai"] = naming.openai_endpoint(
            stack.name, stack.namespace, spec.openai.service.port or naming.OPENAI_PORT
        )
    if spec.frontend.enabled:
        endpoints["gradio"] = naming.gradio_endpoint(
            stack.name, stack.namespace, spec.frontend.service.port or naming.GRADIO_PORT
        )
    return {
        "observedGeneration": observed.generation,
        "conditions": [
            _condition(kind, v, observed.generation, previous, now) for kind, v in verdicts.items()
        ],
        "endpoints": endpoints,
    }


def status_differs(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether writing `desired` would change anything we own (kopf's or others' keys are ignored)."""
    current = current or {}
    return any(current.get(key) != value for key, value in desired.items())


def is_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == READY and c.get("status") == "True" for c in status.get("conditions") or [])


def referenced_secret_names(spec: H2oGPTDeploymentSpec) -> list[tuple[str, str]]:
    """(spec path, Secret name) of every Secret the user must provide."""
    return [(path, ref.name) for path, ref in builders.referenced_secrets(spec)]
