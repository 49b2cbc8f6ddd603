"""Map-reduce orchestration: bounded concurrency (measured), order, failure, grouping."""

from __future__ import annotations

import asyncio
import time

import pytest
from h2ogpt_api import mapreduce

CALL_SECONDS = 0.1


class RecordingLlm:
    """An async callable that sleeps, records peak concurrency, and answers from its prompt."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.prompts: list[str] = []

    async def __call__(self, prompt: str) -> str:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.prompts.append(prompt)
        try:
            await asyncio.sleep(CALL_SECONDS)
            return f"answer({prompt})"
        finally:
            self.in_flight -= 1


def test_extract_runs_at_most_max_parallel_calls_and_keeps_order() -> None:
    llm = RecordingLlm()
    parts = [f"p{i}" for i in range(6)]
    started = time.perf_counter()
    answers = asyncio.run(mapreduce.extract(parts, lambda part: f"do {part}", llm, max_parallel=3))
    elapsed = time.perf_counter() - started
    assert answers == [f"answer(do p{i})" for i in range(6)]
    assert llm.peak == 3
    # Six calls three at a time take two rounds, not six, and not one.
    assert 2 * CALL_SECONDS <= elapsed < 4 * CALL_SECONDS


def test_one_at_a_time_when_parallelism_is_one() -> None:
    llm = RecordingLlm()
    started = time.perf_counter()
    asyncio.run(mapreduce.extract(["a", "b", "c"], str, llm, max_parallel=1))
    assert llm.peak == 1
    assert time.perf_counter() - started >= 3 * CALL_SECONDS


def test_a_failing_call_cancels_the_rest_and_raises() -> None:
    finished: list[str] = []

    async def call(item: str) -> str:
        if item == "bad":
            raise RuntimeError("backend down")
        await asyncio.sleep(0.5)
        finished.append(item)
        return item

    started = time.perf_counter()
    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(mapreduce.bounded_map(["slow1", "bad", "slow2"], call, max_parallel=3))
    assert caught.group_contains(RuntimeError, match="backend down")
    assert finished == []
    assert time.perf_counter() - started < 0.4


def test_group_texts_packs_neighbours_under_the_budget() -> None:
    assert mapreduce.group_texts(["aaa", "bbb", "cccc", "d"], 7) == [["aaa", "bbb"], ["cccc", "d"]]
    assert mapreduce.group_texts(["a" * 20, "b"], 7) == [["a" * 20], ["b"]]


def test_map_summaries_skips_the_map_when_everything_fits() -> None:
    llm = RecordingLlm()
    texts = asyncio.run(
        mapreduce.map_summaries(["short", "texts"], lambda t: f"sum {t}", llm, 3, max_chars=100)
    )
    assert texts == ["short", "texts"]
    assert llm.prompts == []


def test_map_summaries_maps_concurrently_then_reduces_until_it_fits() -> None:
    llm = RecordingLlm()
    parts = ["x" * 40 for _ in range(6)]
    texts = asyncio.run(mapreduce.map_summaries(parts, lambda t: f"sum:{len(t)}", llm, 3, max_chars=50))
    # Each part alone fills the budget: six map calls, three at a time; their answers are short.
    assert llm.peak == 3
    assert len(llm.prompts) >= 6
    assert sum(map(len, texts)) <= 50


def test_each_ended_call_is_reported_as_part_i_of_n() -> None:
    llm = RecordingLlm()
    reports: list[tuple[int, int]] = []
    parts = [f"p{i}" for i in range(5)]
    def report(done: int, total: int) -> None:
        reports.append((done, total))

    asyncio.run(mapreduce.extract(parts, lambda part: part, llm, max_parallel=2, report=report))
    assert reports == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_a_summary_reports_each_of_its_steps() -> None:
    llm = RecordingLlm()
    reports: list[tuple[int, int]] = []
    parts = ["x" * 100 for _ in range(8)]  # 800 characters; 250 fit one call
    asyncio.run(
        mapreduce.map_summaries(
            parts, lambda text: text[:10], llm, max_parallel=3, max_chars=250,
            report=lambda done, total: reports.append((done, total)),
        )
    )
    first_step = [report for report in reports if report[1] == 4]  # 8 parts, two to a group
    assert first_step == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert reports[: len(first_step)] == first_step  # the map step comes before any reduce step
