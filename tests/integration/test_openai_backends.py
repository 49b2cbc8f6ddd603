"""The other backends and the server's limits: vLLM / OpenAI-compatible servers, an unreachable
backend (503), and a full queue (429). The TGI fake's OpenAI routes stand in for vLLM."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.api_server import ApiServerFactory, llm_only_args
from tests.support.tgi_fake import RunningFake, free_port

MODEL = "test/echo-model"


@pytest.mark.parametrize("form", ["vllm", "openai"])
def test_openai_compatible_backends_stream_and_count(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, form: str
) -> None:
    port = tgi_fake.url.rsplit(":", 1)[1]
    server_flag = f"vllm:127.0.0.1:{port}" if form == "vllm" else f"openai:{tgi_fake.url}/v1"
    server = api_server_factory(
        ["--inference_server", server_flag, "--base_model", MODEL, "--langchain_modes", "['LLM']"]
    )
    client = OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0)
    result = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Who are you?"}], max_tokens=50
    )
    assert result.choices[0].message.content == "user: Who are you?"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (4, 4)
    assert client.models.retrieve(MODEL).model_extra["inference_server"] == form  # type: ignore[index]
    streamed = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a b c"}], max_tokens=50, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "user: a b c"
    # With a prompt_type the rendered prompt goes to /v1/completions.
    templated = client.completions.create(
        model=MODEL, prompt="Q?", max_tokens=50, extra_body={"prompt_type": "plain"}
    )
    assert templated.choices[0].text == "Q?"


def test_unreachable_backend_is_503(api_server_factory: ApiServerFactory) -> None:
    server = api_server_factory(
        [
            "--inference_server",
            f"http://127.0.0.1:{free_port()}",
            "--base_model",
            MODEL,
            "--langchain_modes",
            "['LLM']",
        ]
    )
    client = OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "backend_unavailable"  # type: ignore[index]
    metrics_text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    assert 'h2ogpt_api_backend_errors_total{backend="tgi",kind="unavailable"} 1.0' in metrics_text


def test_full_queue_is_429(api_server_factory: ApiServerFactory, tgi_fake: RunningFake) -> None:
    server = api_server_factory(
        [
            *llm_only_args(tgi_fake.url, MODEL),
            "--max_concurrency",
            "1",
            "--max_queue",
            "1",
        ]
    )
    slow = {
        "model": MODEL,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "FAKE:DELAY=0.1 " + " ".join(["w"] * 20)}],
    }
    statuses: list[int] = []

    def call() -> None:
        statuses.append(
            httpx.post(f"{server.openai_url}/chat/completions", json=slow, timeout=30).status_code
        )

    threads = [threading.Thread(target=call) for _ in range(2)]  # one runs, one waits in the queue
    for thread in threads:
        thread.start()
    in_flight = 'h2ogpt_api_in_flight_requests{route="/v1/chat/completions"} 2.0'
    deadline = time.monotonic() + 10
    while in_flight not in httpx.get(f"{server.base_url}/metrics", timeout=5).text:
        assert time.monotonic() < deadline, "the two slow requests never both arrived"
        time.sleep(0.05)
    third = httpx.post(f"{server.openai_url}/chat/completions", json=slow, timeout=30)
    for thread in threads:
        thread.join()
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "queue_full"
    assert third.headers["retry-after"] == "1"
    assert sorted(statuses) == [200, 200]
