"""Which sleeps gradio_api/queue_idle.py turns into waits for work: only an idle loop's own, never a
sleep of a task that loop started (such tasks copy the loop's context, and with it its mark).
tests/integration/test_gradio_idle.py measures the real Gradio queue end to end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import gradio.queueing
from h2ogpt_api.gradio_api import queue_idle

# Well under queue_idle.IDLE_RECHECK_S (0.5 s): a sleep that waited for work would take that long.
PLAIN_SLEEP_LIMIT_S = 0.2


class IdleQueueStandIn:
    """The attributes of gradio.queueing.Queue that queue_idle reads and wraps, with nothing queued.
    `loop_body` is what the events loop runs (Gradio's own loop polls until the queue stops)."""

    sleep_when_free = 0.001
    progress_update_sleep_when_free = 0.01

    def __init__(self, loop_body: Any) -> None:
        self.stopped = False
        self.active_jobs: list[Any] = []
        self.loop_body = loop_body

    def __len__(self) -> int:
        return 0

    async def start_processing(self) -> None:
        await self.loop_body()

    async def start_progress_updates(self) -> None:
        return None

    async def push(self) -> None:
        return None

    async def process_events(self) -> None:
        return None


async def timed_sleep(delay: float) -> float:
    """How long a sleep through gradio.queueing's `asyncio` took."""
    started = time.monotonic()
    await gradio.queueing.asyncio.sleep(delay)
    return time.monotonic() - started


def test_the_idle_loop_waits_but_the_tasks_it_starts_sleep_as_asked() -> None:
    took: dict[str, float] = {}

    async def events_loop() -> None:
        # An event's task, started by the loop as Gradio does: it copies the loop's context.
        took["task started by the loop"] = await asyncio.create_task(timed_sleep(queue.sleep_when_free))
        took["the loop itself"] = await timed_sleep(queue.sleep_when_free)

    queue = IdleQueueStandIn(events_loop)
    queue_idle.wait_for_work(queue)
    asyncio.run(queue.start_processing())

    assert took["task started by the loop"] < PLAIN_SLEEP_LIMIT_S, took
    # Nothing pushed: the loop's idle sleep waited for work until its recheck.
    assert took["the loop itself"] >= queue_idle.IDLE_RECHECK_S * 0.9, took


def test_a_push_ends_the_idle_loops_wait() -> None:
    took: dict[str, float] = {}

    async def loop_then_push() -> None:
        loop = asyncio.create_task(queue.start_processing())
        await asyncio.sleep(0.05)
        await queue.push()
        await loop

    async def waiting_loop() -> None:
        took["the loop, woken"] = await timed_sleep(queue.sleep_when_free)

    queue = IdleQueueStandIn(waiting_loop)
    queue_idle.wait_for_work(queue)
    asyncio.run(loop_then_push())

    assert took["the loop, woken"] < PLAIN_SLEEP_LIMIT_S, took
