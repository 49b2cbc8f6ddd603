"""Autoscaling against the real control plane: a decision becomes status, an Event and the inference
Deployment's replicas; scaled to zero the stack stays Ready; held requests bring a replica back.

The kwok pods run no process, and the apiserver will not proxy to a loopback address, so no pod
proxy can reach an API pod here (the least-privilege test shows the operator asking it anyway).
The API pod's /metrics is therefore served by a real `h2ogpt-api` started here, holding real
requests for a TGI address where nothing listens yet; the test runs the operator's `Autoscaler`
with that page as the pod's (only the transport differs) while the operator process, its own
autoscaler timer set out of the way, reconciles what the decisions record.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from h2ogpt_operator.autoscaler import Autoscaler, MetricsReader
from h2ogpt_operator.kube import Kube, load_api_client
from h2ogpt_operator.watchcache import StackView, WatchCache
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.operator_harness import (
    OperatorProcess,
    items,
    running_operator,
    service_account_kubeconfig,
    wait_for,
    wait_ready,
)
from tests.support.api_server import ApiServer, run_api_server
from tests.support.cluster import Cluster, get_json_or_none, llamacpp_cr
from tests.support.tgi_fake import RunningFake, TgiFake, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "scaled"
INSTANCE = "app.kubernetes.io/instance"


@pytest.fixture
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    log_dir = tmp_path_factory.mktemp("autoscaling")
    # This test takes the autoscaler's turns itself.
    with running_operator(
        cluster, log_dir, "h2ogpt-autoscaling", 0, "--autoscale-interval-seconds", "86400"
    ) as process:
        yield process


def view_of(cluster: Cluster, namespace: str) -> StackView:
    """The stack as the operator's watches would show it."""
    body = get_json_or_none(cluster, "h2ogpt", NAME, "-n", namespace)
    deployment = get_json_or_none(cluster, "deployment", f"{NAME}-inference", "-n", namespace)
    assert body is not None
    assert deployment is not None
    return StackView(
        body={**body, "kind": "H2oGPTDeployment"},
        children={("Deployment", f"{NAME}-inference"): deployment},
        pods=items(cluster, "pods", namespace, f"{INSTANCE}={NAME}"),
    )


def replicas(cluster: Cluster, namespace: str) -> int:
    deployment = get_json_or_none(cluster, "deployment", f"{NAME}-inference", "-n", namespace) or {}
    return int(deployment.get("spec", {}).get("replicas", -1))


def status_autoscaling(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return dict(((get_json_or_none(cluster, "h2ogpt", NAME, "-n", namespace) or {}).get("status") or {}).get(
        "autoscaling") or {})  # fmt: skip


def event_reasons(cluster: Cluster, namespace: str) -> list[str]:
    events = items(cluster, "events", namespace, "")
    return [e["reason"] for e in events if e["involvedObject"]["name"] == NAME]


def llamacpp_stack(**inference: Any) -> dict[str, Any]:
    """The stack these tests scale: llama.cpp inference (kwok pods), no Weaviate, no frontend."""
    return llamacpp_cr(NAME, inference, frontend={"enabled": False})


def pages_of(api: ApiServer) -> MetricsReader:
    """The Autoscaler's reader of an API pod's pages, answered by the real h2ogpt-api started here
    (the apiserver cannot proxy to it: see the module's docstring)."""

    def read(_namespace: str, _pod: str, _port: int, path: str) -> str:
        return httpx.get(f"{api.base_url}/{path}").text

    return read


def lease_spec(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict((get_json_or_none(cluster, "lease", name, "-n", namespace) or {}).get("spec") or {})


def test_decisions_scale_the_inference_to_zero_and_back_for_held_requests(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    stack = llamacpp_stack(autoscaling={"minReplicas": 0, "maxReplicas": 3, "scaleDownDelaySeconds": 0,
                                        "holdSeconds": 120, "maxHeld": 32})  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stack))
    wait_ready(cluster, namespace, NAME, timeout=90)
    config = get_json_or_none(cluster, "configmap", f"{NAME}-config", "-n", namespace) or {}
    assert config["data"]["H2OGPT_HOLD_SECONDS"] == "120"
    assert replicas(cluster, namespace) == 1  # `replicas` (1) until the first decision

    port = free_port()  # the inference Service's stand-in: nothing listens until the "replica" starts
    api_args = [
        "--inference_server",
        f"http://127.0.0.1:{port}",
        "--base_model",
        "org/model",
        "--langchain_modes",
        "['LLM']",
        "--hold_seconds",
        "120",
        # What the operator set in the ConfigMap: the stack can be at zero, so it has a demand Lease.
        "--demand_lease",
        config["data"]["H2OGPT_DEMAND_LEASE"],
    ]
    assert config["data"]["H2OGPT_DEMAND_LEASE"] == f"{namespace}/{NAME}-demand"
    assert lease_spec(cluster, namespace, f"{NAME}-demand") == {}  # created empty
    # The API renews it as the stack's api pods would: with their ServiceAccount's token, so with
    # exactly the Role the operator gave them.
    account = f"{NAME}-api"
    api_kubeconfig = service_account_kubeconfig(cluster, namespace, account, tmp_path / "api.kubeconfig")

    def api_pods_may(*request: str) -> bool:
        subject = f"--as=system:serviceaccount:{namespace}:{account}"
        answer = cluster.kubectl("auth", "can-i", *request, subject, "-n", namespace, check=False)
        return answer.stdout.strip() == "yes"

    assert api_pods_may("patch", f"leases/{NAME}-demand")
    assert not api_pods_may("patch", "leases/another-lease")
    assert not api_pods_may("get", "leases")
    assert not api_pods_may("delete", f"leases/{NAME}-demand")
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    kube = Kube(load_api_client())
    with run_api_server(api_args, {"KUBECONFIG": str(api_kubeconfig)}) as api:
        autoscaler = Autoscaler(kube, WatchCache(), read=pages_of(api))
        # 1. Idle, no delay: the one replica goes.
        assert autoscaler.step(view_of(cluster, namespace), namespace, NAME) is True
        record = status_autoscaling(cluster, namespace)
        assert record["desiredReplicas"] == 0
        assert record["currentReplicas"] == 1
        assert record["reason"] == "scale in 1 -> 0: low for 0s and nothing in flight"
        assert record["lastScaleTime"].endswith("Z")
        wait_for(lambda: replicas(cluster, namespace) == 0, 30, "the operator to apply 0 replicas")
        assert "ScaledDown" in event_reasons(cluster, namespace)
        ready = wait_ready(cluster, namespace, NAME, timeout=30)
        inference = next(c for c in ready["status"]["conditions"] if c["type"] == "InferenceReady")
        assert inference["reason"] == "ScaledToZero"

        # 2. Nothing changed: nothing is written.
        before = get_json_or_none(cluster, "h2ogpt", NAME, "-n", namespace) or {}
        assert autoscaler.step(view_of(cluster, namespace), namespace, NAME) is True  # current 0 recorded
        settled = get_json_or_none(cluster, "h2ogpt", NAME, "-n", namespace) or {}
        assert settled["status"]["autoscaling"]["currentReplicas"] == 0
        assert autoscaler.step(view_of(cluster, namespace), namespace, NAME) is False
        after = get_json_or_none(cluster, "h2ogpt", NAME, "-n", namespace) or {}
        assert after["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]
        assert before["metadata"]["resourceVersion"] != settled["metadata"]["resourceVersion"]

        # 3. Requests arrive at zero replicas: held by the API, and a replica is asked for.
        with OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0, timeout=120) as client, \
                concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:  # fmt: skip

            def ask(index: int) -> str:
                answer = client.chat.completions.create(
                    model="org/model", messages=[{"role": "user", "content": f"held {index}"}], max_tokens=4
                )
                return answer.choices[0].message.content or ""

            answers = [pool.submit(ask, index) for index in range(3)]
            wait_for(lambda: api.metric("h2ogpt_api_held_requests") == 3, 30, "three held requests")
            # The first held request renewed the demand Lease (once: the other two came within
            # demand.RENEW_EVERY_S), and its watch event woke the operator's own autoscaler, whose
            # interval is a day here: it looks only when woken.
            wait_for(lambda: lease_spec(cluster, namespace, f"{NAME}-demand").get("renewTime"), 10,
                     "the API to renew the demand Lease")  # fmt: skip
            assert lease_spec(cluster, namespace, f"{NAME}-demand")["holderIdentity"] == socket.gethostname()
            assert api.metric("h2ogpt_api_demand_renewals_total", result="sent", cause="held") == 1
            looks = "h2ogpt_operator_autoscaler_looks_total"
            wait_for(lambda: operator.metric_sum(f'{looks}{{trigger="demand"}}') >= 1, 10,
                     "the operator's autoscaler to look at once")  # fmt: skip
            assert operator.metric_sum(f'{looks}{{trigger="poll"}}') == 0
            assert autoscaler.step(view_of(cluster, namespace), namespace, NAME) is True
            record = status_autoscaling(cluster, namespace)
            assert record["desiredReplicas"] == 1
            assert record["reason"] == "scale up 0 -> 1: 3 in flight, target 8 per replica, 3 held"
            wait_for(lambda: replicas(cluster, namespace) == 1, 30, "the operator to apply 1 replica")
            assert "ScaledUp" in event_reasons(cluster, namespace)
            # The replica "starts": the held requests are answered, none lost.
            fake = RunningFake(TgiFake(), port=port).start()
            try:
                assert [f"held {i}" in f.result(timeout=60) for i, f in enumerate(answers)] == [True] * 3
            finally:
                fake.stop()


# Addresses of this machine (all of 127/8 is loopback) that stand in for the kwok inference pods' IPs.
REPLICA_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def replica_in_flight(api: ApiServer) -> dict[str, float]:
    text = httpx.get(api.base_url + "/metrics", timeout=5).text
    return {
        sample.labels["replica"]: float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "h2ogpt_api_replica_in_flight"
    }


def test_a_scale_in_under_load_removes_the_idle_replicas_not_the_streaming_one(
    cluster: Cluster, namespace: str, operator: OperatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three inference replicas, one streaming an answer, the load fits one: the autoscaler marks the
    two idle pods and the real ReplicaSet controller removes exactly those.

    Each kwok inference pod is given, in the view the Autoscaler reads, a loopback address where a
    TGI fake answers for it (kwok pods run nothing and their addresses are not on this machine); the
    pods it marks and the ReplicaSet removes are the real ones. The Autoscaler runs with the chart's
    ServiceAccount's credentials, so its pod patches need what the chart grants."""
    stack = llamacpp_stack(
        replicas=3, autoscaling={"minReplicas": 1, "maxReplicas": 3, "scaleDownDelaySeconds": 0}
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stack))
    wait_ready(cluster, namespace, NAME, timeout=90)
    selector = f"{INSTANCE}={NAME},app.kubernetes.io/component=inference"
    wait_for(lambda: len(items(cluster, "pods", namespace, selector)) == 3, 60, "three inference pods")
    pods = sorted(p["metadata"]["name"] for p in items(cluster, "pods", namespace, selector))
    stand_in = dict(zip(pods, REPLICA_HOSTS, strict=True))
    port = 8000  # the llamacpp engine's port: the replicas are named podIP:8000

    def view_with_stand_ins() -> StackView:
        view = view_of(cluster, namespace)
        for pod in view.pods:
            if pod["metadata"]["name"] in stand_in:
                pod["status"]["podIP"] = stand_in[pod["metadata"]["name"]]
        return view

    fakes = [RunningFake(TgiFake(token_delay=0.05, repeat=True), port=port, host=host).start()
             for host in REPLICA_HOSTS]  # fmt: skip
    servers = ",".join(f"http://{host}:{port}" for host in REPLICA_HOSTS)
    api_args = ["--inference_server", servers, "--routing", "round_robin", "--base_model", "org/model",
                "--langchain_modes", "['LLM']"]  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(operator.kubeconfig))  # the chart's ServiceAccount
    kube = Kube(load_api_client())
    try:
        with run_api_server(api_args) as api, \
                OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0, timeout=120) as client, \
                concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:  # fmt: skip

            def long_answer() -> tuple[str | None, int | None]:
                """The stream's finish reason and its token count: a cut stream ends in an error
                instead. (Counting chunks is not counting tokens: a backend that falls behind passes
                on the tokens piled up as one chunk, seen once on a loaded machine: 299 for 300.)"""
                stream = client.chat.completions.create(
                    model="org/model", messages=[{"role": "user", "content": "a long answer"}],
                    max_tokens=300, stream=True, stream_options={"include_usage": True},
                )  # fmt: skip
                finish, tokens = None, None
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                return finish, tokens

            answer = pool.submit(long_answer)
            wait_for(lambda: sum(replica_in_flight(api).values()) == 1, 30, "the answer streaming")
            busy_host = next(name for name, n in replica_in_flight(api).items() if n == 1).split(":")[0]
            busy_pod = next(pod for pod, host in stand_in.items() if host == busy_host)

            autoscaler = Autoscaler(kube, WatchCache(), read=pages_of(api))
            assert autoscaler.step(view_with_stand_ins(), namespace, NAME) is True
            record = status_autoscaling(cluster, namespace)
            assert record["desiredReplicas"] == 1
            assert record["reason"] == (
                "scale in 3 -> 1: low for 0s, 2 replicas idle (1 requests in flight on the others)"
            )
            wait_for(lambda: replicas(cluster, namespace) == 1, 30, "the operator to apply 1 replica")

            def staying() -> list[str]:
                found = [p["metadata"] for p in items(cluster, "pods", namespace, selector)]
                return sorted(meta["name"] for meta in found if "deletionTimestamp" not in meta)

            wait_for(lambda: staying() == [busy_pod], 60, f"only the streaming pod {busy_pod} to stay")
            kept = get_json_or_none(cluster, "pod", busy_pod, "-n", namespace) or {}
            assert "controller.kubernetes.io/pod-deletion-cost" not in kept["metadata"].get("annotations", {})
            # The answer was not cut: it ran to its length, all 300 tokens.
            assert answer.result(timeout=60) == ("length", 300)
    finally:
        for fake in fakes:
            fake.stop()


def test_api_pods_past_the_target_in_flight_wake_the_operator_to_scale_up(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A stack at two replicas that may grow to three, targetInFlight 1. A real h2ogpt-api on the
    settings the operator wrote for it, with its api pods' token, routes to two stand-in replicas: one
    stream per replica renews nothing; a third in flight asks for three replicas, and the API renews
    the demand Lease, which wakes the operator's own autoscaler (its interval a day here) at once."""
    stack = llamacpp_stack(replicas=2, autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetInFlight": 1})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stack))
    wait_ready(cluster, namespace, NAME, timeout=90)
    data = (get_json_or_none(cluster, "configmap", f"{NAME}-config", "-n", namespace) or {})["data"]
    # Not at zero, yet the autoscaler can add a replica: the stack has a demand Lease all the same.
    assert data["H2OGPT_DEMAND_LEASE"] == f"{namespace}/{NAME}-demand"
    assert (data["H2OGPT_SCALE_UP_IN_FLIGHT"], data["H2OGPT_SCALE_UP_MAX_REPLICAS"]) == ("1", "3")
    assert lease_spec(cluster, namespace, f"{NAME}-demand") == {}
    api_kubeconfig = service_account_kubeconfig(
        cluster, namespace, f"{NAME}-api", tmp_path / "api.kubeconfig"
    )

    port = free_port()
    hosts = REPLICA_HOSTS[:2]
    fakes = [
        RunningFake(TgiFake(token_delay=0.05, repeat=True), port=port, host=host).start() for host in hosts
    ]
    api_args = [
        "--inference_server", ",".join(f"http://{host}:{port}" for host in hosts),
        "--base_model", "org/model", "--langchain_modes", "['LLM']",
        "--hold_seconds", data["H2OGPT_HOLD_SECONDS"],
        "--demand_lease", data["H2OGPT_DEMAND_LEASE"],
        "--scale_up_in_flight", data["H2OGPT_SCALE_UP_IN_FLIGHT"],
        "--scale_up_max_replicas", data["H2OGPT_SCALE_UP_MAX_REPLICAS"],
    ]  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    kube = Kube(load_api_client())
    looks = "h2ogpt_operator_autoscaler_looks_total"
    try:
        with run_api_server(api_args, {"KUBECONFIG": str(api_kubeconfig)}) as api, \
                OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0, timeout=120) as client, \
                concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:  # fmt: skip

            def answer(index: int) -> str | None:
                reply = client.chat.completions.create(
                    model="org/model", messages=[{"role": "user", "content": f"load {index}"}], max_tokens=100
                )
                return reply.choices[0].finish_reason

            first_two = [pool.submit(answer, index) for index in range(2)]
            wait_for(lambda: sum(replica_in_flight(api).values()) == 2, 30, "two answers streaming")
            # One per ready replica: at the target, nothing to ask for.
            assert api.metric("h2ogpt_api_demand_renewals_total") == 0
            third = pool.submit(answer, 2)
            wait_for(lambda: lease_spec(cluster, namespace, f"{NAME}-demand").get("renewTime"), 10,
                     "the API to renew the demand Lease")  # fmt: skip
            assert api.metric("h2ogpt_api_demand_renewals_total", result="sent", cause="load") == 1
            wait_for(lambda: operator.metric_sum(f'{looks}{{trigger="demand"}}') >= 1, 10,
                     "the operator's autoscaler to look at once")  # fmt: skip
            assert operator.metric_sum(f'{looks}{{trigger="poll"}}') == 0
            # What that look decides, from this API's figures while the three stream.
            autoscaler = Autoscaler(kube, WatchCache(), read=pages_of(api))
            assert autoscaler.step(view_of(cluster, namespace), namespace, NAME) is True
            assert status_autoscaling(cluster, namespace)["reason"] == (
                "scale up 2 -> 3: 3 in flight, target 1 per replica"
            )
            wait_for(lambda: replicas(cluster, namespace) == 3, 30, "the operator to apply 3 replicas")
            assert [f.result(timeout=60) for f in (*first_two, third)] == ["length"] * 3
    finally:
        for fake in fakes:
            fake.stop()
