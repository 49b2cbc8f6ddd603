"""Routing across inference replicas: the real `h2ogpt-api` in front of three TGI fakes (the one
allowed fake, each a real server on its own loopback port), used with the official `openai` and
`gradio_client` packages. Which replica served a request is read from the fakes' own counters.
"""

from __future__ import annotations

import ast
import concurrent.futures
import os
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from gradio_client import Client
from openai import OpenAI

from tests.support.api_server import ApiServer, ApiServerFactory
from tests.support.tgi_fake import RunningFake, TgiFake

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MODEL = "fake/tgi-echo"
SYSTEM = "You answer questions from the documents you are given, briefly."
REPLICAS = 3
API_NAME = "/submit_nochat_api"


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[RunningFake]]:
    running = [RunningFake(TgiFake()).start() for _ in range(REPLICAS)]
    yield running
    for fake in running:
        fake.stop()


@pytest.fixture(scope="module")
def server(api_server_factory: ApiServerFactory, replicas: list[RunningFake]) -> ApiServer:
    return api_server_factory(
        [
            "--inference_server", ",".join(fake.url for fake in replicas),
            "--base_model", MODEL,
            "--langchain_modes", "['LLM']",
            "--gradio", "True",
            "--backend_timeout", "5",
        ]
    )  # fmt: skip


@pytest.fixture
def client(server: ApiServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0) as client:
        yield client


def started(replicas: list[RunningFake]) -> list[int]:
    return [fake.fake.stats.started for fake in replicas]


def served_by(replicas: list[RunningFake], before: list[int]) -> int:
    """The one replica that started a generation since `before`."""
    counts = zip(started(replicas), before, strict=True)
    grown = [index for index, (now, then) in enumerate(counts) if now > then]
    assert len(grown) == 1, f"expected one replica to serve, got {grown}"
    return grown[0]


def chat(client: OpenAI, messages: list[dict[str, str]], max_tokens: int = 8) -> str:
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens)  # type: ignore[arg-type]
    return str(answer.choices[0].message.content)


def conversation(document: str, turns: int) -> Iterator[list[dict[str, str]]]:
    """The messages of each turn of a conversation about `document` (its history growing)."""
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Document: {document} " * 20 + "What is it about?"},
    ]
    for turn in range(turns):
        yield list(messages)
        messages += [
            {"role": "assistant", "content": f"answer {turn}"},
            {"role": "user", "content": f"more {turn}?"},
        ]


def test_each_conversation_stays_on_one_replica_and_conversations_spread(
    client: OpenAI, replicas: list[RunningFake], server: ApiServer
) -> None:
    homes: dict[str, set[int]] = {}
    hits_before = server.metric("h2ogpt_api_routing_prefix_total", result="hit")
    for document in [f"doc{index}" for index in range(12)]:
        for messages in conversation(document, turns=3):
            before = started(replicas)
            chat(client, messages)
            homes.setdefault(document, set()).add(served_by(replicas, before))
    assert all(len(home) == 1 for home in homes.values()), homes
    # 12 conversations over 3 replicas: the ring puts them on more than one.
    assert len(set().union(*homes.values())) > 1
    # Turns 2 and 3 of every conversation went where turn 1 had gone: 24 prefix hits.
    assert server.metric("h2ogpt_api_routing_prefix_total", result="hit") - hits_before == 24
    assert server.metric("h2ogpt_api_routing_decisions_total", policy="prefix") >= 36


def test_a_session_header_pins_different_prompts_to_one_replica(
    server: ApiServer, replicas: list[RunningFake]
) -> None:
    for session in ("alpha", "beta", "gamma"):
        headers = {"X-Session-ID": session}
        with OpenAI(
            base_url=server.openai_url, api_key="EMPTY", max_retries=0, default_headers=headers
        ) as pinned:
            seen = set()
            for index in range(6):
                before = started(replicas)
                chat(pinned, [{"role": "user", "content": f"unrelated prompt number {index} {session}"}])
                seen.add(served_by(replicas, before))
        assert len(seen) == 1, (session, seen)


def test_bounded_load_spreads_one_hot_prefix(client: OpenAI, replicas: list[RunningFake]) -> None:
    """12 requests at once with the same prefix: the home replica takes its bound, the rest spill."""
    before = started(replicas)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "hot FAKE:DELAY=0.05 words"},
    ]

    def one() -> str:
        return chat(client, messages, max_tokens=20)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: one(), range(12)))
    assert all(answer.startswith("system:") for answer in answers)
    counts = [now - then for now, then in zip(started(replicas), before, strict=True)]
    assert sum(counts) == 12
    # At most 1.25 x the mean (12/3 = 4): 5; and the load reached every replica.
    assert max(counts) <= 5, counts
    assert min(counts) >= 1, counts


def test_a_stopped_replica_is_taken_out_and_requests_go_elsewhere(
    client: OpenAI, replicas: list[RunningFake], server: ApiServer
) -> None:
    messages = [{"role": "user", "content": "Document: victim " * 30}]
    before = started(replicas)
    chat(client, messages)
    home = served_by(replicas, before)
    victim = replicas[home]
    victim.stop()
    try:
        failures = server.metric("h2ogpt_api_replica_failures_total", kind="unavailable")
        started_at = time.monotonic()
        # The home is gone: the request is retried on another replica and answered.
        assert chat(client, messages).startswith("user: Document: victim")
        assert time.monotonic() - started_at < 5
        assert server.metric("h2ogpt_api_replica_failures_total", kind="unavailable") == failures + 1
        # While it is out, its requests go elsewhere without trying it again.
        for _ in range(3):
            assert chat(client, messages).startswith("user: Document: victim")
        assert server.metric("h2ogpt_api_replica_failures_total", kind="unavailable") == failures + 1
    finally:
        replicas[home] = victim.started_again()
    # After its backoff (1 s) it is tried again, succeeds, and its keys come home.
    time.sleep(1.2)
    before = started(replicas)
    chat(client, messages)
    assert served_by(replicas, before) == home


def test_a_replica_failing_mid_stream_ends_that_stream_with_an_openai_error(
    client: OpenAI, replicas: list[RunningFake], server: ApiServer
) -> None:
    failures = server.metric("h2ogpt_api_replica_failures_total", kind="bad_response")
    started_at = time.monotonic()
    stream = client.chat.completions.create(
        model=MODEL,
        stream=True,
        max_tokens=50,
        messages=[{"role": "user", "content": "FAKE:DROP one two three four five six"}],
    )
    with pytest.raises(openai.APIError, match="mid-response"):
        for _ in stream:
            pass
    assert time.monotonic() - started_at < 5  # an error, not a hang
    assert server.metric("h2ogpt_api_replica_failures_total", kind="bad_response") == failures + 1
    time.sleep(1.2)  # its backoff, so the next tests see every replica up


def test_gradio_client_routes_by_session_header_and_prefix(
    server: ApiServer, replicas: list[RunningFake]
) -> None:
    assert server.gradio_url is not None

    def ask(gradio: Client, instruction: str) -> dict[str, object]:
        answer = ast.literal_eval(gradio.predict(str({"instruction": instruction}), api_name=API_NAME))
        assert isinstance(answer, dict)
        return answer

    pinned = Client(server.gradio_url, verbose=False, headers={"X-Session-ID": "gradio-session"})
    seen = set()
    for index in range(5):
        before = started(replicas)
        assert "response" in ask(pinned, f"different question {index}")
        seen.add(served_by(replicas, before))
    assert len(seen) == 1
    # Without a header the prompt's first --routing_prefix_chars (1024) decide: the same document
    # before different questions is one key, so one replica.
    plain = Client(server.gradio_url, verbose=False)
    homes = set()
    for index in range(4):
        before = started(replicas)
        ask(plain, "Document: gradio doc " * 60 + f"question {index}")  # past 1024 characters
        homes.add(served_by(replicas, before))
    assert len(homes) == 1


def test_gradio_client_gets_an_answer_when_the_home_replica_is_gone(
    server: ApiServer, replicas: list[RunningFake]
) -> None:
    assert server.gradio_url is not None
    gradio = Client(server.gradio_url, verbose=False)
    instruction = "Document: gradio victim " * 40
    before = started(replicas)
    gradio.predict(str({"instruction": instruction}), api_name="/submit_nochat_api")
    home = served_by(replicas, before)
    victim = replicas[home]
    victim.stop()
    try:
        answer = ast.literal_eval(gradio.predict(str({"instruction": instruction}), api_name=API_NAME))
        assert "gradio victim" in answer["response"]
        assert not answer.get("error")
    finally:
        replicas[home] = victim.started_again()


def test_the_gradio_rest_route_routes_by_session_header(
    server: ApiServer, replicas: list[RunningFake]
) -> None:
    assert server.gradio_url is not None
    url = server.gradio_url.rstrip("/") + "/api/submit_nochat_plain_api"
    seen = set()
    for index in range(4):
        before = started(replicas)
        body = {"data": [str({"instruction": f"a curl question {index}"})]}
        response = httpx.post(url, json=body, headers={"X-Session-ID": "curl-session"}, timeout=30)
        assert response.status_code == 200, response.text
        seen.add(served_by(replicas, before))
    assert len(seen) == 1
