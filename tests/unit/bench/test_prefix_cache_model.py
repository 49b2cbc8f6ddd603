"""The TGI fake's prefix-cache MODEL (tests/support/tgi_fake.py), which bench/routing.py relies on."""

from __future__ import annotations

import asyncio
import time

from tests.support.tgi_fake import PrefixCacheModel, SharedCompute


def tokens(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index}" for index in range(count)]


def test_only_whole_blocks_of_a_prompt_seen_before_are_cached() -> None:
    model = PrefixCacheModel(capacity_tokens=1000, block_tokens=16)
    system = tokens("s", 40)
    assert model.uncached_tokens(system) == 40  # cold
    assert model.uncached_tokens(system) == 8  # two whole blocks cached, the partial third not
    longer = system + tokens("q", 30)
    assert model.uncached_tokens(longer) == 70 - 32
    # The same tokens after a different start are not a cached prefix.
    assert model.uncached_tokens(tokens("x", 1) + system) == 41
    assert model.prompt_tokens == 40 + 40 + 70 + 41
    assert model.cached_tokens == 32 + 32


def test_the_cache_is_a_bounded_lru() -> None:
    model = PrefixCacheModel(capacity_tokens=64, block_tokens=16)  # four blocks
    first, second = tokens("a", 32), tokens("b", 32)
    model.uncached_tokens(first)
    model.uncached_tokens(second)
    assert model.uncached_tokens(first) == 0  # both fit; `first` is now the most recent
    model.uncached_tokens(tokens("c", 32))  # evicts `second`, the least recently used
    assert model.uncached_tokens(second) == 32
    assert model.uncached_tokens(tokens("c", 32)) == 0


def test_prefills_share_a_replicas_compute() -> None:
    async def timed(jobs: list[float]) -> list[float]:
        compute = SharedCompute()
        started = time.perf_counter()

        async def one(seconds: float) -> float:
            await compute.run(seconds)
            return time.perf_counter() - started

        return await asyncio.gather(*(one(seconds) for seconds in jobs))

    (alone,) = asyncio.run(timed([0.2]))
    short, long = asyncio.run(timed([0.1, 0.3]))
    assert alone >= 0.195  # (a timer may fire within the clock's resolution)
    # Together at half speed: the short job's 0.1 s take 0.2 s; the long one then runs alone.
    assert short >= 0.195
    assert long >= 0.395
    assert long < 1.5  # loose: a busy machine may add delay, never take work away
