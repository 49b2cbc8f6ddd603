"""A serving h2ogpt-api looks for reference cycles rarely (cli.settle_garbage_collector): what its
collector did is on /metrics (prometheus_client's `python_gc_collections_total`), read before and
after a burst of concurrent streamed answers through the official `openai` client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api_server import ApiServer, ApiServerFactory
from tests.support.tgi_fake import RunningFake, TgiFake

STREAMS = 128
ROUNDS = 3
# With Python's own threshold (700) these 384 answers took 128 young-generation collections here;
# settled, none.
MOST_YOUNG_COLLECTIONS = 20


@pytest.fixture(scope="module")
def slow_fake() -> Iterator[RunningFake]:
    running = RunningFake(TgiFake(token_delay=0.01, repeat=True)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server(api_server_factory: ApiServerFactory, slow_fake: RunningFake) -> ApiServer:
    return api_server_factory(["--inference_server", slow_fake.url])


def collections(server: ApiServer) -> dict[str, float]:
    """Collections so far per generation ("0", "1", "2")."""
    text = httpx.get(server.base_url + "/metrics", timeout=5).text
    return {
        sample.labels["generation"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "python_gc_collections_total"
    }


async def streamed_answers(openai_url: str) -> list[str]:
    async with AsyncOpenAI(base_url=openai_url, api_key="EMPTY", max_retries=0, timeout=60) as client:

        async def one(index: int) -> str:
            stream = await client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": f"answer {index}"}], max_tokens=32,
                stream=True,
            )  # fmt: skip
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        answers: list[str] = []
        for _ in range(ROUNDS):
            answers += await asyncio.gather(*(one(index) for index in range(STREAMS)))
        return answers


def test_concurrent_answers_cost_few_garbage_collections(server: ApiServer) -> None:
    assert server.openai_url is not None
    before = collections(server)
    answers = asyncio.run(streamed_answers(server.openai_url))
    assert len(answers) == STREAMS * ROUNDS
    assert all(answers)
    after = collections(server)
    young = after["0"] - before["0"]
    assert young <= MOST_YOUNG_COLLECTIONS, f"{young:.0f} young-generation collections for the answers"
