"""The autoscaler's timer work for one stack: read the load, decide, record the decision.

Every `--autoscale-interval-seconds`, for each stack with `spec.inference.autoscaling`, the
operator reads each serving API pod's /metrics through the apiserver's pod proxy
(`/api/v1/namespaces/N/pods/P:port/proxy/metrics`: no route to the pod network needed, no
metrics adapter), and, with `targetQueueSize`, the inference pods' own queue gauge. The pure
`autoscale.decide` turns that into a replica count and a reason. Before a scale-in that counts on
idle replicas (the API pods' `h2ogpt_api_replica_in_flight` shows no request on them), those
inference pods get the lowest `controller.kubernetes.io/pod-deletion-cost`, so that the
ReplicaSet removes them and not a pod that is streaming. A new decision is written to
`status.autoscaling` (and posted as an Event when the count changes); the stack is then
reconciled, and the reconciler applies the count to the inference Deployment
(`builders.inference_replicas`): one writer of the replicas, so nothing fights over them.
A decision that changes nothing writes nothing, so an idle stack costs reads only.

A stack is also looked at as soon as its api pods ask for more replicas: they renew its demand Lease
(api demand.py) when they start holding a request at zero replicas, or when one pod alone has more
than targetInFlight per ready replica in flight; the Lease's watch event calls `wake`, and the next
look comes now instead of up to an interval later. The look and the decision are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from h2ogpt_operator import builders, metrics, naming
from h2ogpt_operator.autoscale import Load, Memory, PodLoad, decide
from h2ogpt_operator.kube import APISERVER_ERRORS, Kube
from h2ogpt_operator.models import GROUP, KIND, VERSION, H2oGPTDeploymentSpec
from h2ogpt_operator.watchcache import StackView, WatchCache, resource_version

log = logging.getLogger(__name__)
# A pod's metrics not read: no answer through the apiserver's proxy, or a page that does not parse.
UNREADABLE_METRICS: tuple[type[Exception], ...] = (*APISERVER_ERRORS, ValueError)

Manifest = dict[str, Any]
Key = tuple[str, str]
# (namespace, pod, port, path) -> the page's text; the apiserver's pod proxy unless a test says otherwise.
MetricsReader = Callable[[str, str, int, str], str]

API_PORTS = {naming.OPENAI: naming.OPENAI_PORT, naming.GRADIO: naming.GRADIO_PORT}
# The API's figures: generations admitted or waiting for a slot (held ones are among them), and held.
IN_FLIGHT_SERIES = ("h2ogpt_api_generations_running", "h2ogpt_api_requests_waiting")
HELD_SERIES = "h2ogpt_api_held_requests"
# Requests streaming from each inference replica (label `replica`: host:port), where the API routes.
REPLICA_SERIES = "h2ogpt_api_replica_in_flight"
# The ReplicaSet controller removes the pods with the lowest cost first (after unscheduled, pending
# and not-ready ones); unmarked pods count 0.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
IDLE_COST = "-1000"
ENGINE_QUEUE_SERIES = {"tgi": "tgi_queue_size", "vllm": "vllm:num_requests_waiting"}


def _samples(text: str) -> Iterable[tuple[str, Mapping[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, float(sample.value)


def api_pod_load(text: str) -> PodLoad:
    """One API pod's figures from its /metrics page; ValueError when the page is not h2ogpt-api's."""
    in_flight = held = 0.0
    replicas: dict[str, float] = {}
    seen = False
    for name, labels, value in _samples(text):
        if name in IN_FLIGHT_SERIES:
            in_flight += value
            seen = True
        elif name == HELD_SERIES:
            held += value
        elif name == REPLICA_SERIES and "replica" in labels:
            replicas[labels["replica"]] = replicas.get(labels["replica"], 0.0) + value
    if not seen:
        raise ValueError(f"no {' / '.join(IN_FLIGHT_SERIES)} on the page: not an h2ogpt-api /metrics")
    return PodLoad(in_flight=in_flight, held=held, replicas=replicas)


def engine_queue(text: str, engine: str) -> float:
    """Requests waiting inside one engine pod (TGI's tgi_queue_size, vLLM's vllm:num_requests_waiting)."""
    series = ENGINE_QUEUE_SERIES[engine]
    values = [value for name, _labels, value in _samples(text) if name == series]
    if not values:
        raise ValueError(f"no {series} on the engine's /metrics")
    return sum(values)


def serving_pods(pods: Sequence[Manifest], component: str) -> list[Manifest]:
    """The component's pods that are Ready and not going away: those the Service sends requests to."""
    serving = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if naming.component_of(pod) != component:
            continue
        if meta.get("deletionTimestamp"):
            continue
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            serving.append(pod)
    return serving


def idle_inference_pods(pods: Sequence[Manifest], api_loads: Sequence[PodLoad], port: int) -> list[str]:
    """Names of the serving inference pods no API pod has a request streaming from, in name order.

    Only meaningful where the API pods route across replicas themselves (each request goes to the
    replica it chose, named podIP:port) and every serving API pod's figures were read: an API pod
    that does not name a replica has sent it nothing since the replica joined. A stream on a name
    that is no inference pod's (the Service's address, which an API pod uses until its first list
    of the EndpointSlices, or forever if it cannot list them) may run on any pod: then none is
    known to be idle.
    """
    busy = {name for load in api_loads for name, count in load.replicas.items() if count > 0}
    inference = [pod for pod in pods if naming.component_of(pod) == naming.INFERENCE]
    known = {replica for pod in inference if (replica := _replica_name(pod, port))}
    if busy - known:
        return []
    idle = []
    for pod in serving_pods(pods, naming.INFERENCE):
        replica = _replica_name(pod, port)
        if replica and replica not in busy:
            idle.append(pod["metadata"]["name"])
    return sorted(idle)


def _replica_name(pod: Manifest, port: int) -> str | None:
    """How the API pods name an inference pod in their per-replica figures (podIP:port); None before
    it has an address."""
    address = (pod.get("status") or {}).get("podIP")
    return f"{address}:{port}" if address else None


def deletion_cost_patches(pods: Sequence[Manifest], marked: Iterable[str]) -> dict[str, Manifest]:
    """Pod name -> merge patch: the `marked` inference pods get IDLE_COST, the others lose a mark set
    before (a pod marked idle that the ReplicaSet kept may be busy now). Pods already right: none."""
    marked = set(marked)
    patches: dict[str, Manifest] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if naming.component_of(pod) != naming.INFERENCE:
            continue
        has = (meta.get("annotations") or {}).get(DELETION_COST)
        wanted = IDLE_COST if meta["name"] in marked else None
        if has != wanted:
            patches[meta["name"]] = {"metadata": {"annotations": {DELETION_COST: wanted}}}
    return patches


def rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def autoscaling_status(
    previous: Mapping[str, Any], desired: int, current: int, reason: str, now: float
) -> dict[str, Any] | None:
    """The new `status.autoscaling`, or None when the last one recorded already says this."""
    if previous.get("desiredReplicas") == desired and previous.get("currentReplicas") == current:
        return None
    return {
        "desiredReplicas": desired,
        "currentReplicas": current,
        "reason": reason,
        "lastScaleTime": rfc3339(now) if desired != current else previous.get("lastScaleTime"),
    }


def applied_yet(spec: H2oGPTDeploymentSpec, previous: Mapping[str, Any], current: int) -> bool | None:
    """Whether the last recorded decision is on the Deployment (None: no decision yet). Deciding again
    before it is would judge the old count and could undo the decision."""
    decided = previous.get("desiredReplicas")
    if not isinstance(decided, int):
        return None
    return builders.inference_replicas(spec, decided) == current


def asks_for_autoscaling(body: Mapping[str, Any] | None) -> bool:
    """Whether a CR's spec names `inference.autoscaling` (read raw: no validation)."""
    inference = ((body or {}).get("spec") or {}).get("inference") or {}
    return bool(inference.get("autoscaling"))


class Autoscaler:
    def __init__(
        self,
        kube: Kube,
        cache: WatchCache,
        read: MetricsReader | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.read: MetricsReader = read or kube.pod_proxy_text
        self.clock = clock
        self.memory: dict[Key, Memory] = {}
        self._woken: set[Key] = set()
        self._wakeup = asyncio.Event()

    def _read_all(self, namespace: str, pods: Sequence[Manifest], port: Callable[[Manifest], int],
                  parse: Callable[[str], Any]) -> tuple[list[Any], int]:
        found, unreadable = [], 0
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            try:
                found.append(parse(self.read(namespace, pod_name, port(pod), "metrics")))
            except UNREADABLE_METRICS as exc:
                unreadable += 1
                log.info("autoscaler: cannot read %s/%s metrics: %s", namespace, pod_name, exc)
        return found, unreadable

    def load(
        self, namespace: str, pods: Sequence[Manifest], spec: H2oGPTDeploymentSpec
    ) -> tuple[Load, list[str]]:
        """The stack's load, and the names of its idle inference pods (see `idle_inference_pods`)."""
        api_pods = [pod for component in API_PORTS for pod in serving_pods(pods, component)]
        loads, unreadable = self._read_all(
            namespace,
            api_pods,
            lambda pod: API_PORTS[naming.component_of(pod) or ""],
            api_pod_load,
        )
        queue: float | None = None
        scaling = spec.inference.autoscaling
        engine = spec.inference.engine
        if scaling is not None and scaling.target_queue_size is not None and engine in ENGINE_QUEUE_SERIES:
            queues, missed = self._read_all(
                namespace,
                serving_pods(pods, naming.INFERENCE),
                lambda _pod: naming.INFERENCE_PORTS[engine],
                lambda text: engine_queue(text, engine),
            )
            queue = None if missed else sum(queues)
        idle: list[str] = []
        port = naming.INFERENCE_PORTS.get(engine)
        if port is not None and builders.routes_across_replicas(spec) and loads and not unreadable:
            idle = idle_inference_pods(pods, loads, port)
        return Load(api_pods=loads, unreadable=unreadable, engine_queue=queue, idle_replicas=len(idle)), idle

    def wake(self, key: Key) -> None:
        """Look at this stack now rather than at the next interval (its api pods asked for more
        replicas). On the event loop, like the watch handler that calls it."""
        self._woken.add(key)
        self._wakeup.set()

    async def run(self, interval: float, leading: asyncio.Event, reconcile: Callable[[Key], None]) -> None:
        """Look at every autoscaled stack each `interval`, and at a woken one at once, while leading; a
        new decision is reconciled."""
        loop = asyncio.get_running_loop()
        next_round = loop.time() + interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, next_round - loop.time()))
            self._wakeup.clear()
            woken, self._woken = self._woken, set()
            if loop.time() >= next_round:
                next_round = loop.time() + interval
                keys, trigger = list(self.cache.stack_keys()), "poll"
            else:
                keys, trigger = sorted(woken), "demand"
            if not leading.is_set():
                continue
            for key in keys:
                # Most stacks are not autoscaled: skip those it has nothing to decide or clear for,
                # before building their view and validating their spec, each interval.
                if key not in self.memory and not asks_for_autoscaling(self.cache.watched_body(*key)):
                    continue
                view = self.cache.view(*key)  # copied on the event loop, where kopf writes the indexes
                metrics.AUTOSCALER_LOOKS.labels(trigger=trigger).inc()
                try:
                    if await asyncio.to_thread(self.step, view, *key):
                        reconcile(key)
                except Exception:  # one stack's failure must not stop the others' scaling
                    log.exception("autoscaler: %s/%s failed", *key)

    def mark_idle(self, namespace: str, pods: Sequence[Manifest], idle: Sequence[str]) -> None:
        """Give the idle pods a scale-in removes the lowest deletion cost, and take it back from others."""
        for pod_name, patch in deletion_cost_patches(pods, idle).items():
            try:
                self.kube.merge_patch("v1", "Pod", namespace, pod_name, patch)
            except APISERVER_ERRORS as exc:  # a pod gone meanwhile; the ReplicaSet ranks the rest
                log.info("autoscaler: cannot mark %s/%s: %s", namespace, pod_name, exc)

    def step(self, view: StackView, namespace: str, name: str) -> bool:
        """One look at one stack; True when a new decision was recorded (the stack needs a reconcile)."""
        key = (namespace, name)
        body = view.body
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.memory.pop(key, None)
            metrics.publish_autoscaling(namespace, name, None)
            return False
        try:
            spec = H2oGPTDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return False  # the reconciler reports it
        policy = spec.inference.autoscaling
        deployment = view.children.get(("Deployment", naming.child_name(name, naming.INFERENCE)))
        if policy is None or spec.suspend or deployment is None:
            self.memory.pop(key, None)
            metrics.publish_autoscaling(namespace, name, None)
            return False
        current = int((deployment.get("spec") or {}).get("replicas", 1))
        previous = (body.get("status") or {}).get("autoscaling") or {}
        if applied_yet(spec, previous, current) is False:
            return True  # the last decision is not on the Deployment yet: reconcile, decide next time
        now = self.clock()
        load, idle = self.load(namespace, view.pods, spec)
        decision = decide(policy, current, load, self.memory.get(key, Memory()), now)
        self.memory[key] = decision.memory
        if decision.desired < current and idle:
            # Before the count goes down (the status write below leads to the Deployment's patch).
            self.mark_idle(namespace, view.pods, idle[: current - decision.desired])
        metrics.publish_autoscaling(namespace, name, (decision.desired, current))
        record = autoscaling_status(previous, decision.desired, current, decision.reason, now)
        if record is None:
            return False
        written = self.kube.merge_patch(
            f"{GROUP}/{VERSION}", KIND, namespace, name, {"status": {"autoscaling": record}},
            subresource="status",
        )
        self.cache.wrote(key, KIND, name, resource_version(body), written)
        if decision.desired != current:
            reason = "ScaledUp" if decision.desired > current else "ScaledDown"
            self.kube.post_event(body, reason, decision.reason)
            log.info("autoscaler: %s/%s %s", namespace, name, decision.reason)
        return True
