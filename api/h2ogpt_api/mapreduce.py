"""Map and map-reduce over document parts with bounded concurrency (Summarize, Extract).

Pure orchestration: the LLM is an async callable `llm_call(prompt_text) -> answer`, so the
concurrency rules are tested with timing alone. At most `max_parallel` calls are in flight;
results keep the input order whatever order calls finish in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

LlmCall = Callable[[str], Awaitable[str]]
# Told (calls done, calls in this step) each time a call ends, so a person can see "part 3 of 10".
ProgressReport = Callable[[int, int], None]


def _ignore_progress(done: int, total: int) -> None:
    """The default report: nobody is watching."""


async def bounded_map(
    items: Sequence[Item],
    call: Callable[[Item], Awaitable[Result]],
    max_parallel: int,
    report: ProgressReport = _ignore_progress,
) -> list[Result]:
    """`call` on every item, at most `max_parallel` at a time, results in input order.

    The first failure cancels the calls still running and is raised.
    """
    if max_parallel < 1:
        raise ValueError("max_parallel must be at least 1")
    gate = asyncio.Semaphore(max_parallel)
    done = 0

    async def gated(item: Item) -> Result:
        nonlocal done
        async with gate:
            result = await call(item)
        done += 1
        report(done, len(items))
        return result

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(gated(item)) for item in items]
    return [task.result() for task in tasks]


def group_texts(texts: Sequence[str], max_chars: int) -> list[list[str]]:
    """Consecutive texts packed into groups of at most `max_chars` (a longer text gets its own group)."""
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for text in texts:
        if current and size + len(text) > max_chars:
            groups.append(current)
            current, size = [], 0
        current.append(text)
        size += len(text)
    if current:
        groups.append(current)
    return groups


async def extract(
    parts: Sequence[str],
    make_prompt: Callable[[str], str],
    llm_call: LlmCall,
    max_parallel: int,
    *,
    report: ProgressReport = _ignore_progress,
) -> list[str]:
    """One call per part (h2oGPT's Extract): the answers in part order."""
    return await bounded_map(parts, lambda part: llm_call(make_prompt(part)), max_parallel, report)


async def map_summaries(
    parts: Sequence[str],
    make_prompt: Callable[[str], str],
    llm_call: LlmCall,
    max_parallel: int,
    max_chars: int,
    *,
    report: ProgressReport = _ignore_progress,
) -> list[str]:
    """The map and intermediate reduce steps of a summary, leaving texts that fit one final call.

    Parts are summarized concurrently; while their summaries together are longer than
    `max_chars`, neighbouring summaries are grouped and summarized again. The caller makes
    the final call (so it can stream it). `report` counts the calls of each step.
    """
    if sum(map(len, parts)) <= max_chars:
        return list(parts)
    texts = await bounded_map(
        group_texts(parts, max_chars),
        lambda group: llm_call(make_prompt("\n\n".join(group))),
        max_parallel,
        report,
    )
    while len(texts) > 1 and sum(map(len, texts)) > max_chars:
        groups = group_texts(texts, max_chars)
        if len(groups) == len(texts):  # every summary alone fills the budget: cut rather than loop
            texts = [text[: max_chars // len(texts)] for text in texts]
            break
        texts = await bounded_map(
            groups, lambda group: llm_call(make_prompt("\n\n".join(group))), max_parallel, report
        )
    return texts
