"""The other backends and the server's limits: vLLM / OpenAI-compatible servers, an unreachable
backend (503), and a full queue (429). The TGI fake's OpenAI routes stand in for vLLM."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import uvicorn
from h2ogpt_api.backends.base import (
    CONNECT_TIMEOUT_S,
    POOL_IDLE_S,
    Backend,
    BackendRequest,
    Sampling,
    StreamEnd,
)
from h2ogpt_api.backends.openai_compat import OpenAICompatBackend
from h2ogpt_api.backends.tgi import TgiBackend
from h2ogpt_api.prompts import ChatMessage
from openai import OpenAI
from starlette.types import Receive, Scope, Send

from tests.support.api_server import ApiServerFactory, llm_only_args
from tests.support.tgi_fake import RunningFake, TgiFake, free_port

MODEL = "test/echo-model"


def openai_compatible_server(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, form: str
) -> OpenAI:
    """An openai client of h2ogpt-api in front of the fake's OpenAI routes (`vllm:` or `openai:` form)."""
    port = tgi_fake.url.rsplit(":", 1)[1]
    server_flag = f"vllm:127.0.0.1:{port}" if form == "vllm" else f"openai:{tgi_fake.url}/v1"
    server = api_server_factory(
        ["--inference_server", server_flag, "--base_model", MODEL, "--langchain_modes", "['LLM']"]
    )
    return OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0)


@pytest.mark.parametrize("form", ["vllm", "openai"])
def test_openai_compatible_backends_stream_and_count(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, form: str
) -> None:
    client = openai_compatible_server(api_server_factory, tgi_fake, form)
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


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port whose connects hang: a listener with a full accept queue drops every further SYN, as a
    stale Service rule or a firewall's DROP does. Yields the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # more than the queue holds
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


@pytest.mark.parametrize("form", ["tgi", "openai"])
def test_a_connect_that_hangs_is_unavailable_after_the_connect_timeout(
    api_server_factory: ApiServerFactory, form: str
) -> None:
    """Not a 504 after the kernel's two minutes of SYN retries: 503 `unavailable` (nothing reached a
    model, so the hold and the router may try again) once CONNECT_TIMEOUT_S has passed."""
    with black_hole() as port:
        url = f"http://127.0.0.1:{port}"
        server = api_server_factory(
            ["--inference_server", url if form == "tgi" else f"openai:{url}/v1", "--base_model", MODEL,
             "--langchain_modes", "['LLM']"]
        )  # fmt: skip
        client = OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0, timeout=60)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        waited = time.monotonic() - started
    assert caught.value.status_code == 503, caught.value.body
    assert caught.value.body["code"] == "backend_unavailable"  # type: ignore[index]
    assert CONNECT_TIMEOUT_S - 0.5 < waited < CONNECT_TIMEOUT_S + 5, waited


@pytest.mark.parametrize("form", ["vllm", "openai"])
def test_a_stream_an_openai_compatible_server_cuts_ends_in_one_error(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, form: str
) -> None:
    client = openai_compatible_server(api_server_factory, tgi_fake, form)
    stream = client.chat.completions.create(
        model=MODEL, stream=True, max_tokens=50,
        messages=[{"role": "user", "content": "FAKE:DROP one two three four five"}],
    )  # fmt: skip
    with pytest.raises(openai.APIError, match="mid-response"):
        for _ in stream:
            pass


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


class ConnectionRecordingFake(TgiFake):
    """The fake, noting the client port of each request: a new port is a new connection."""

    def __init__(self) -> None:
        super().__init__()
        self.client_ports: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client"):
            self.client_ports.append(scope["client"][1])
        await super().__call__(scope, receive, send)


def _backend(kind: str, url: str) -> Backend:
    if kind == "tgi":
        return TgiBackend(url, model_name=MODEL, timeout=10)
    return OpenAICompatBackend(f"{url}/v1", kind="vllm", model_name=MODEL, timeout=10)


@pytest.mark.parametrize("kind", ["tgi", "vllm"])
def test_a_backend_drops_an_idle_connection_before_a_uvicorn_server_would(kind: str) -> None:
    # uvicorn (vLLM's server, the fake's) closes a connection idle for 5 s; a request sent on it as
    # it closes fails, already sent. Both backends retire idle connections after POOL_IDLE_S < 5 s.
    assert uvicorn.Config(app=None).timeout_keep_alive > POOL_IDLE_S
    fake = ConnectionRecordingFake()
    running = RunningFake(fake).start()
    request = BackendRequest(
        messages=(ChatMessage(role="user", content="hi"),), sampling=Sampling(max_new_tokens=4)
    )

    async def three_requests() -> None:
        backend = _backend(kind, running.url)
        try:
            for pause in (0.0, 0.5, POOL_IDLE_S + 0.5):
                await asyncio.sleep(pause)
                assert isinstance([event async for event in backend.stream(request)][-1], StreamEnd)
        finally:
            await backend.aclose()

    try:
        asyncio.run(three_requests())
    finally:
        running.stop()
    first, soon_after, after_idle = fake.client_ports
    assert soon_after == first  # kept alive while it is in use
    assert after_idle != first  # a new connection once it sat idle past POOL_IDLE_S, not before 5 s
