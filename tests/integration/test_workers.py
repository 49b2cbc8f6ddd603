"""`h2ogpt-api --workers N`: N processes on one OpenAI port, each admitting its share of the
backend's limit, one `/metrics` summing them all, and state that must not depend on which
worker a connection reaches (stored /v1/responses conversations) shared between them.

The TGI fake admits 10 at once (and answers 429 past that, as TGI): two workers admit 5 each,
so 10 running at once shows that both workers serve, and never more than 10 that their shares
add up to the backend's limit.

The load wake (`--scale_up_in_flight`) counts the pod's generations over its workers, not each
worker's share: 40 streams on two replicas pass a target of 16 per replica only summed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from h2ogpt_api import workers
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api_server import (
    ApiServer,
    ApiServerFactory,
    api_executable,
    concurrent_streams,
    llm_only_args,
)
from tests.support.cluster import wait_for
from tests.support.kubeconfig import unreachable_kubeconfig
from tests.support.tgi_fake import RunningFake, TgiFake, free_port

MODEL = "fake/tgi-echo"
TOKENS = 20
STREAMS = 40


@pytest.fixture(scope="module")
def slow_fake() -> Iterator[RunningFake]:
    running = RunningFake(TgiFake(token_delay=0.1, repeat=True, max_concurrent_requests=10)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server(api_server_factory: ApiServerFactory, slow_fake: RunningFake) -> ApiServer:
    return api_server_factory([*llm_only_args(slow_fake.url, MODEL), "--workers", "2"])


def _sample(metrics_text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_two_workers_serve_each_its_share_and_metrics_sum_them(
    server: ApiServer, slow_fake: RunningFake
) -> None:
    assert "h2ogpt-api ready (2 workers" in server.log()
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}  # every worker has started
    assert server.log().count("max_concurrency 5 (what the tgi backend admits") == 2

    tokens = asyncio.run(concurrent_streams(server.openai_url or "", MODEL, STREAMS, TOKENS))

    assert tokens == [TOKENS] * STREAMS
    stats = slow_fake.fake.stats
    assert stats.peak_running == 10  # 5 in each worker at once: both serve
    assert stats.overloaded == 0  # and together never more than the backend admits
    # Whichever worker answers /metrics, it counts every worker's requests.
    for _ in range(4):
        with httpx.Client() as fresh:  # a new connection each time: any worker may answer
            text = fresh.get(server.base_url + "/metrics").text
        route = {"route": "/v1/chat/completions", "status": "200"}
        assert _sample(text, "h2ogpt_api_requests_total", route) == STREAMS
        assert _sample(text, "h2ogpt_api_generated_tokens_total", {"route": "/v1/chat/completions"}) == (
            STREAMS * TOKENS
        )


def test_a_worker_reports_starting_until_every_worker_serves(
    slow_fake: RunningFake, tmp_path: Path
) -> None:
    """One worker serves before the others (each loads and connects on its own), and one failing its
    start-up stops them all: its /health must not tell a readiness probe the pod is ready before the
    supervisor has seen every worker start. A worker process run here by hand, as the supervisor
    runs it, with the supervisor's part (the marker file) played by the test."""
    (tmp_path / workers.METRICS_SUBDIR).mkdir()
    port = free_port()
    env = {**os.environ, workers.WORKER_ENV: "0/2", workers.STATE_DIR_ENV: str(tmp_path),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / workers.METRICS_SUBDIR), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "h2ogpt_api", *llm_only_args(slow_fake.url, MODEL), "--gradio", "False",
               "--server_name", "127.0.0.1", "--openai_port", str(port), "--workers", "2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        health = f"http://127.0.0.1:{port}/health"

        def answer() -> httpx.Response | None:
            try:
                return httpx.get(health, timeout=2)
            except httpx.TransportError:
                return None

        starting = wait_for(answer, 60, "the worker to serve")
        assert (starting.status_code, starting.json()["status"]) == (503, "starting")
        assert httpx.get(health, timeout=2).status_code == 503  # still: the others have not started
        (tmp_path / workers.ALL_STARTED_FILE).touch()
        ready = httpx.get(health, timeout=2)
        assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_stored_response_continues_on_any_worker(server: ApiServer) -> None:
    url = server.openai_url or ""
    with httpx.Client() as first:
        stored = first.post(
            url + "/responses", json={"model": MODEL, "input": "remember the harbour", "max_output_tokens": 5}
        )
    assert stored.status_code == 200, stored.text
    for attempt in range(8):
        with httpx.Client() as fresh:  # new connections land on either worker
            answer = fresh.post(
                url + "/responses",
                json={
                    "model": MODEL,
                    "input": f"and again {attempt}",
                    "previous_response_id": stored.json()["id"],
                    "max_output_tokens": 6,
                },
            )
        assert answer.status_code == 200, answer.text
        assert "harbour" in answer.json()["output"][0]["content"][0]["text"]  # the history came along


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--langchain_modes", "['LLM']"], "needs an --inference_server"),
        (
            ["--inference_server", "http://127.0.0.1:9", "--langchain_modes", "['LLM']",
             "--requests_per_minute", "10"],
            "would admit 2 times each limit",
        ),
        (["--inference_server", "http://127.0.0.1:9"], "needs --weaviate_url"),
    ],
)
def test_combinations_that_several_processes_cannot_serve_are_refused_at_start(
    flags: list[str], reason: str
) -> None:
    result = subprocess.run(
        [api_executable(), "--workers", "2", "--openai_port", "0", "--gradio", "False", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert reason in result.stderr + result.stdout


def test_the_load_wake_counts_the_generations_of_every_worker(
    api_server_factory: ApiServerFactory, tmp_path: Path
) -> None:
    """Two workers, two replicas, a target of 16 in flight per replica: 40 streams at once ask for 3
    replicas, which the kernel's spreading of connections over the workers (about 20 each; one worker
    holding 33 or more of 40 has odds near 1 in 100000) would hide from a worker counting alone. The
    renewal itself goes to an apiserver that is not there (its failure is counted and logged)."""
    replicas = [RunningFake(TgiFake(token_delay=0.1, repeat=True)).start() for _ in range(2)]
    kubeconfig = unreachable_kubeconfig(tmp_path)
    try:
        servers = ",".join(replica.url for replica in replicas)
        wake = ["--demand_lease", "team-a/demo-demand", "--scale_up_in_flight", "16",
                "--scale_up_max_replicas", "4"]  # fmt: skip
        server = api_server_factory(
            [*llm_only_args(servers, MODEL), "--workers", "2", *wake], {"KUBECONFIG": str(kubeconfig)}
        )
        tokens = asyncio.run(concurrent_streams(server.openai_url or "", MODEL, STREAMS, TOKENS))
        assert tokens == [TOKENS] * STREAMS
        text = httpx.get(server.base_url + "/metrics").text
        assert _sample(text, "h2ogpt_api_demand_renewals_total", {"cause": "load", "result": "failed"}) >= 1
        assert "renewing the demand Lease team-a/demo-demand (load) failed" in server.log()
    finally:
        for replica in replicas:
            replica.stop()
