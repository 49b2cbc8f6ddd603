"""The autoscaler's reading of metrics pages and pods, and what it records: pure parts; and when it looks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from h2ogpt_operator.autoscale import PodLoad
from h2ogpt_operator.autoscaler import (
    Autoscaler,
    api_pod_load,
    applied_yet,
    asks_for_autoscaling,
    autoscaling_status,
    deletion_cost_patches,
    engine_queue,
    idle_inference_pods,
    rfc3339,
    serving_pods,
)
from h2ogpt_operator.models import H2oGPTDeploymentSpec
from prometheus_client import CollectorRegistry, Gauge, generate_latest

# What TGI's /metrics says about its queue (a Prometheus gauge, as TGI's router exports it).
TGI_PAGE = """# TYPE tgi_queue_size gauge
tgi_queue_size 7
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 4
"""
VLLM_PAGE = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
"""


def api_page(
    running: float, waiting: float, held: float | None, replicas: dict[str, float] | None = None
) -> str:
    """An /metrics page with the API's own series, written by prometheus_client as the API writes it."""
    registry = CollectorRegistry()
    Gauge("h2ogpt_api_generations_running", "Generations holding a slot", registry=registry).set(running)
    Gauge("h2ogpt_api_requests_waiting", "Generations waiting for a slot", registry=registry).set(waiting)
    if held is not None:
        Gauge("h2ogpt_api_held_requests", "Requests held", registry=registry).set(held)
    if replicas is not None:
        per_replica = Gauge(
            "h2ogpt_api_replica_in_flight", "Requests streaming", ["replica"], registry=registry
        )
        for name, count in replicas.items():
            per_replica.labels(replica=name).set(count)
    return generate_latest(registry).decode()


def inference_pod(name: str, ip: str, ready: bool = True, cost: str | None = None) -> dict[str, Any]:
    annotations = {"controller.kubernetes.io/pod-deletion-cost": cost} if cost is not None else {}
    return {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "inference"},
                     "annotations": annotations},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }  # fmt: skip


def test_api_pod_load_adds_running_and_waiting_and_reads_held() -> None:
    assert api_pod_load(api_page(5, 2, 3)) == PodLoad(in_flight=7, held=3)
    assert api_pod_load(api_page(1, 0, None)) == PodLoad(in_flight=1, held=0)


def test_a_page_without_the_api_series_is_refused() -> None:
    with pytest.raises(ValueError, match="not an h2ogpt-api /metrics"):
        api_pod_load(TGI_PAGE)


@pytest.mark.parametrize(("engine", "page", "queue"), [("tgi", TGI_PAGE, 7), ("vllm", VLLM_PAGE, 3)])
def test_engine_queue_reads_the_engines_own_gauge(engine: str, page: str, queue: float) -> None:
    assert engine_queue(page, engine) == queue


def test_engine_queue_missing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no vllm:num_requests_waiting"):
        engine_queue(TGI_PAGE, "vllm")


def pod(name: str, component: str, ready: bool, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/component": component}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def test_serving_pods_are_ready_and_staying() -> None:
    pods = [
        pod("a", "openai", True),
        pod("b", "openai", False),
        pod("c", "openai", True, deleting=True),
        pod("d", "gradio", True),
        {"metadata": {"name": "e", "labels": {}}},
    ]
    assert [p["metadata"]["name"] for p in serving_pods(pods, "openai")] == ["a"]
    assert [p["metadata"]["name"] for p in serving_pods(pods, "gradio")] == ["d"]


def test_a_decision_already_recorded_writes_nothing() -> None:
    previous = {"desiredReplicas": 2, "currentReplicas": 2, "reason": "steady at 2", "lastScaleTime": "t0"}
    assert autoscaling_status(previous, 2, 2, "steady at 2: 5 in flight", 100.0) is None


def test_a_scale_records_its_time_and_a_settled_count_keeps_it() -> None:
    scaled = autoscaling_status({}, 1, 0, "scale up 0 -> 1", 1_796_000_000.0)
    assert scaled == {
        "desiredReplicas": 1,
        "currentReplicas": 0,
        "reason": "scale up 0 -> 1",
        "lastScaleTime": rfc3339(1_796_000_000.0),
    }
    settled = autoscaling_status(scaled, 1, 1, "steady at 1", 1_796_000_015.0)
    assert settled is not None
    assert settled["currentReplicas"] == 1
    assert settled["lastScaleTime"] == scaled["lastScaleTime"]


def test_rfc3339_is_utc_seconds() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


def test_a_decision_not_yet_applied_is_waited_for() -> None:
    spec = H2oGPTDeploymentSpec.model_validate(
        {"model": {"name": "m"}, "inference": {"autoscaling": {"minReplicas": 0, "maxReplicas": 3}}}
    )
    assert applied_yet(spec, {}, 1) is None
    assert applied_yet(spec, {"desiredReplicas": 1}, 0) is False  # scale-up recorded, not applied yet
    assert applied_yet(spec, {"desiredReplicas": 1}, 1) is True
    assert applied_yet(spec, {"desiredReplicas": 9}, 3) is True  # max lowered since: the clamp is applied


def test_only_stacks_that_name_autoscaling_are_looked_at() -> None:
    assert asks_for_autoscaling({"spec": {"inference": {"autoscaling": {"maxReplicas": 2}}}})
    assert not asks_for_autoscaling({"spec": {"inference": {"replicas": 3}}})
    assert not asks_for_autoscaling({"spec": {}})
    assert not asks_for_autoscaling(None)


def test_api_pod_load_reads_each_replicas_streams() -> None:
    load = api_pod_load(api_page(3, 0, None, {"10.0.0.5:80": 2, "10.0.0.6:80": 0, "10.0.0.7:80": 1}))
    assert load.replicas == {"10.0.0.5:80": 2, "10.0.0.6:80": 0, "10.0.0.7:80": 1}
    assert api_pod_load(api_page(0, 0, None)).replicas == {}


def test_idle_inference_pods_are_serving_ones_no_api_pod_streams_from() -> None:
    pods = [
        inference_pod("busy-on-a", "10.0.0.5"),
        inference_pod("busy-on-b", "10.0.0.6"),
        inference_pod("idle", "10.0.0.7"),
        inference_pod("never-named", "10.0.0.8"),
        inference_pod("starting", "10.0.0.9", ready=False),
    ]
    a = PodLoad(2, replicas={"10.0.0.5:80": 2, "10.0.0.6:80": 0, "10.0.0.7:80": 0})
    b = PodLoad(1, replicas={"10.0.0.6:80": 1})
    assert idle_inference_pods(pods, [a, b], 80) == ["idle", "never-named"]
    # Streams named on another port are on no inference pod's server: they may be anywhere.
    assert idle_inference_pods(pods, [a, b], 8000) == []


def test_a_stream_through_the_service_leaves_no_pod_known_idle() -> None:
    # An API pod that has not listed the EndpointSlices yet sends through the Service's address:
    # that stream may be on any pod.
    pods = [inference_pod("a", "10.0.0.5"), inference_pod("b", "10.0.0.6")]
    through_service = PodLoad(1, replicas={"10.96.0.20:8000": 1})
    assert idle_inference_pods(pods, [through_service], 8000) == []
    # A stream on a pod that is going away is still a known one.
    leaving = [*pods, inference_pod("c", "10.0.0.7", ready=False)]
    assert idle_inference_pods(leaving, [PodLoad(1, replicas={"10.0.0.7:8000": 1})], 8000) == ["a", "b"]


def test_deletion_cost_marks_the_chosen_and_unmarks_the_rest_once() -> None:
    pods = [
        inference_pod("chosen", "10.0.0.5"),
        inference_pod("marked-before-now-busy", "10.0.0.6", cost="-1000"),
        inference_pod("chosen-already-marked", "10.0.0.7", cost="-1000"),
        inference_pod("untouched", "10.0.0.8"),
        {"metadata": {"name": "api", "labels": {"app.kubernetes.io/component": "openai"}}},
    ]
    patches = deletion_cost_patches(pods, ["chosen", "chosen-already-marked"])
    key = "controller.kubernetes.io/pod-deletion-cost"
    assert patches == {
        "chosen": {"metadata": {"annotations": {key: "-1000"}}},
        "marked-before-now-busy": {"metadata": {"annotations": {key: None}}},
    }


class _Stacks:
    """The two calls `Autoscaler.run` makes of the watch cache, for stacks that all ask for autoscaling."""

    def __init__(self, *keys: tuple[str, str]) -> None:
        self.keys = list(keys)

    def stack_keys(self) -> list[tuple[str, str]]:
        return self.keys

    def watched_body(self, _namespace: str, _name: str) -> dict[str, Any]:
        return {"spec": {"inference": {"autoscaling": {"minReplicas": 0, "maxReplicas": 1}}}}

    def view(self, namespace: str, name: str) -> tuple[str, str]:
        return (namespace, name)


class _Looks(Autoscaler):
    """An Autoscaler whose look at a stack is recorded instead of reading pods (the timing is tested)."""

    def __init__(self, cache: _Stacks) -> None:
        super().__init__(kube=None, cache=cache, read=lambda *_: "")  # type: ignore[arg-type]
        self.looked: list[tuple[tuple[str, str], float]] = []

    def step(self, view: Any, namespace: str, name: str) -> bool:
        self.looked.append(((namespace, name), time.monotonic()))
        return True


async def _looks_within(
    seconds: float, interval: float, *, leading: bool, wake: tuple[str, str] | None
) -> tuple[list[tuple[tuple[str, str], float]], list[tuple[str, str]], float]:
    autoscaler = _Looks(_Stacks(("ns", "a"), ("ns", "b")))
    lead = asyncio.Event()
    if leading:
        lead.set()
    reconciled: list[tuple[str, str]] = []
    task = asyncio.create_task(autoscaler.run(interval, lead, reconciled.append))
    await asyncio.sleep(0.05)
    woken_at = time.monotonic()
    if wake is not None:
        autoscaler.wake(wake)
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return autoscaler.looked, reconciled, woken_at


def test_a_woken_stack_is_looked_at_at_once_and_alone() -> None:
    looked, reconciled, woken_at = asyncio.run(_looks_within(0.5, 3600, leading=True, wake=("ns", "a")))
    assert [key for key, _at in looked] == [("ns", "a")]  # not b: the day-long round has not come
    assert looked[0][1] - woken_at < 0.4  # a day-long interval otherwise; a busy CI machine is slow
    assert reconciled == [("ns", "a")]  # a new decision is reconciled, as at the round


def test_the_round_still_looks_at_every_stack_each_interval() -> None:
    looked, _reconciled, _woken_at = asyncio.run(_looks_within(0.5, 0.2, leading=True, wake=None))
    keys = [key for key, _at in looked]
    assert keys[:4] == [("ns", "a"), ("ns", "b"), ("ns", "a"), ("ns", "b")]


def test_a_standby_operator_ignores_a_wake() -> None:
    looked, _reconciled, _woken_at = asyncio.run(_looks_within(0.3, 3600, leading=False, wake=("ns", "a")))
    assert looked == []
