"""Gradio's queue waits for work while idle instead of polling for it.

Two of the queue's loops poll: the one that starts events sleeps 1 ms whenever no event waits,
and the one that sends progress updates sleeps 10 ms whenever no event runs. An idle Gradio
server therefore spends about 3.3% of a core doing nothing (measured here: 3.7% of a core against
0.4% with both loops waiting), in every gradio pod of every stack, all day. Gradio has no setting
or hook for this (a longer sleep would add its length to the start of every request after a quiet
moment), so `wait_for_work` turns exactly those two idle sleeps into waits that the work ends:
a new event (the queue's `push`) wakes the loop that starts events, and an event starting
(`process_events`) wakes the one that sends progress. Each wait also ends after IDLE_RECHECK_S,
so a wake that never came costs at most that, never a hang; a closed queue's loops see `stopped`
within it.

How: the loops call `asyncio.sleep` through `gradio.queueing`'s module global `asyncio`, which
is replaced by a proxy of the asyncio module whose `sleep` knows, from a context variable that
each loop's task sets, which loop of which queue is asking. Every other sleep, and every other
name of asyncio, goes to asyncio unchanged. Where Gradio's loops change, the proxy's check no
longer matches and they poll as before (tests/integration/test_gradio_idle.py measures both the
idle CPU and a request's start after a quiet moment).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import gradio.queueing

# The longest an idle loop waits before it looks again by itself.
IDLE_RECHECK_S = 0.5

Loop = Literal["events", "progress"]
# Set by each of the two loops' tasks for itself: which loop of which queue it is, its waker and
# the task. Tasks the loop starts (each event's) copy the variable with the context; the task
# recorded keeps their sleeps their own.
_asking: contextvars.ContextVar[tuple[Loop, Any, _Waker, asyncio.Task[Any] | None] | None] = (
    contextvars.ContextVar("h2ogpt_gradio_queue_loop", default=None)
)


class _Waker:
    """The futures an idle loop of one queue waits on; `wake` ends every wait."""

    def __init__(self) -> None:
        self._waiting: set[asyncio.Future[None]] = set()

    def wake(self) -> None:
        for waiting in self._waiting:
            if not waiting.done():
                waiting.set_result(None)
        self._waiting.clear()

    async def wait(self) -> None:
        waiting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.add(waiting)
        try:
            await asyncio.wait_for(waiting, IDLE_RECHECK_S)
        except TimeoutError:
            pass
        finally:
            self._waiting.discard(waiting)


def _idle(loop: Loop, queue: Any, delay: float) -> bool:
    """Whether this sleep is the loop's idle one: no event waiting, or none running."""
    if queue.stopped:
        return False
    if loop == "events":
        return delay == queue.sleep_when_free and len(queue) == 0
    return delay == queue.progress_update_sleep_when_free and not any(queue.active_jobs)


class _AsyncioWithIdleWaits:
    """`asyncio` for gradio.queueing: its `sleep` waits for work where a queue loop is idle."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result: Any = None) -> Any:
        asking = _asking.get()
        if asking is not None:
            loop, queue, waker, task = asking
            if task is asyncio.current_task() and _idle(loop, queue, delay):
                await waker.wait()
                return result
        return await asyncio.sleep(delay, result)


def _in_loop(
    loop: Loop, queue: Any, waker: _Waker, run: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    async def marked() -> None:
        _asking.set((loop, queue, waker, asyncio.current_task()))
        await run()

    return marked


def _waking_after(waker: _Waker, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        finally:
            waker.wake()

    return wrapped


def _waking_before(waker: _Waker, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        waker.wake()
        return await method(*args, **kwargs)

    return wrapped


def wait_for_work(queue: Any) -> None:
    """Make `queue`'s two polling loops wait while idle (see the module). Call before it starts."""
    module_globals = vars(gradio.queueing)
    if not isinstance(module_globals["asyncio"], _AsyncioWithIdleWaits):
        module_globals["asyncio"] = _AsyncioWithIdleWaits()
    waker = _Waker()
    queue.start_processing = _in_loop("events", queue, waker, queue.start_processing)
    queue.start_progress_updates = _in_loop("progress", queue, waker, queue.start_progress_updates)
    queue.push = _waking_after(waker, queue.push)
    queue.process_events = _waking_before(waker, queue.process_events)
