"""How many generations `h2ogpt-api` lets run at once follows what the backend admits.

The TGI fake reports `max_concurrent_requests` in `/info` and, as TGI, answers 429 past it; it
counts the most generations that ran at once. Streams are long (tokens 0.1 s apart) so that
every admitted stream is running at the same moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from h2ogpt_api import concurrency
from h2ogpt_api.backends.tgi import TgiBackend
from h2ogpt_api.core import AdmissionGate

from tests.support.api_server import ApiServerFactory, concurrent_streams, llm_only_args
from tests.support.tgi_fake import RunningFake, TgiFake, free_port

MODEL = "fake/tgi-echo"
TOKENS = 30
TOKEN_DELAY_S = 0.1  # a stream lasts about 3 s


@pytest.fixture
def slow_fake(request: pytest.FixtureRequest) -> Iterator[RunningFake]:
    running = RunningFake(
        TgiFake(token_delay=TOKEN_DELAY_S, repeat=True, max_concurrent_requests=request.param)
    ).start()
    yield running
    running.stop()


@pytest.mark.parametrize("slow_fake", [96], indirect=True)
def test_by_default_as_many_run_at_once_as_tgi_info_says(
    api_server_factory: ApiServerFactory, slow_fake: RunningFake
) -> None:
    # 96 is above the old fixed default (64): the proxy must not be the queue.
    server = api_server_factory(llm_only_args(slow_fake.url, MODEL))
    chosen = "max_concurrency 96 (what the tgi backend admits: /info max_concurrent_requests 96)"
    assert chosen in server.log()

    tokens = asyncio.run(concurrent_streams(server.openai_url or "", MODEL, 110, TOKENS))

    assert tokens == [TOKENS] * 110  # every stream answered in full, none refused
    stats = slow_fake.fake.stats
    assert stats.peak_running == 96  # all the backend admits ran at once, and never more
    assert stats.overloaded == 0  # the 14 beyond waited in the proxy, not refused by TGI


async def _gradio_streams(gradio_url: str, count: int) -> list[str]:
    """`count` streamed /submit_nochat_api calls at once through Gradio's queued REST API (what
    Gradio's API page shows for curl, and what the load generator sends); the event each stream
    ended with."""
    params = {"instruction": "count", "max_new_tokens": TOKENS, "stream_output": True}
    call = f"{gradio_url.rstrip('/')}/gradio_api/call/submit_nochat_api"
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> str:
            event_id = (await client.post(call, json={"data": [str(params)]})).json()["event_id"]
            last = ""
            async with client.stream("GET", f"{call}/{event_id}") as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        last = line.removeprefix("event: ")
            return last

        return await asyncio.gather(*(one() for _ in range(count)))


@pytest.mark.parametrize("slow_fake", [96], indirect=True)
def test_the_gradio_side_runs_as_many_at_once_too(
    api_server_factory: ApiServerFactory, slow_fake: RunningFake
) -> None:
    # 60 is above what Gradio's queue runs at once by default (40).
    server = api_server_factory([*llm_only_args(slow_fake.url, MODEL), "--gradio", "True"])
    assert server.gradio_url is not None

    ends = asyncio.run(_gradio_streams(server.gradio_url, 60))

    assert ends == ["complete"] * 60
    assert slow_fake.fake.stats.peak_running == 60


@pytest.mark.parametrize("slow_fake", [96], indirect=True)
def test_an_explicit_max_concurrency_wins(
    api_server_factory: ApiServerFactory, slow_fake: RunningFake
) -> None:
    server = api_server_factory([*llm_only_args(slow_fake.url, MODEL), "--max_concurrency", "5"])
    assert "max_concurrency 5 (--max_concurrency 5)" in server.log()

    tokens = asyncio.run(concurrent_streams(server.openai_url or "", MODEL, 12, TOKENS))

    assert tokens == [TOKENS] * 12
    assert slow_fake.fake.stats.peak_running == 5


@pytest.mark.parametrize("slow_fake", [1024], indirect=True)
def test_an_openai_compatible_backend_gets_no_limit_of_ours(
    api_server_factory: ApiServerFactory, slow_fake: RunningFake
) -> None:
    # The fake's OpenAI-style chat route, as any OpenAI-compatible server: it publishes no limit.
    server = api_server_factory(llm_only_args(f"openai:{slow_fake.url}/v1", MODEL))
    assert "max_concurrency no limit of our own (the openai backend reports no limit)" in server.log()

    tokens = asyncio.run(concurrent_streams(server.openai_url or "", MODEL, 80, TOKENS))

    assert tokens == [TOKENS] * 80
    assert slow_fake.fake.stats.peak_running == 80  # above the old default of 64


def test_a_tgi_still_loading_gets_tgis_default_until_its_info_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In a cluster the API pods often start before TGI has loaded its model: the limit starts at
    # TGI's default and follows /info as soon as TGI answers.
    monkeypatch.setattr(concurrency, "ASK_AGAIN_SECONDS", 0.05)
    port = free_port()

    async def scenario() -> tuple[int | None, int | None]:
        backend = TgiBackend(f"http://127.0.0.1:{port}", model_name=MODEL, timeout=5)
        gate = AdmissionGate(None, max_queue=0)
        try:
            asking = await concurrency.settle(gate, backend, None)
            assert asking is not None
            before = gate.limit
            running = RunningFake(TgiFake(max_concurrent_requests=300), port=port).start()
            try:
                await asyncio.wait_for(asking, timeout=10)
            finally:
                running.stop()
            return before, gate.limit
        finally:
            await backend.aclose()

    assert asyncio.run(scenario()) == (concurrency.TGI_DEFAULT_MAX_CONCURRENT_REQUESTS, 300)
