"""A keyed work queue: every watch event enqueues its stack; one reconcile per stack at a time.

Events arrive in bursts (a rollout touches a Deployment, a ReplicaSet's pods, the status); keys
already waiting are coalesced, and a key that changes while it is being reconciled runs once
more afterwards. Every known key is re-queued each `resync_seconds` (level-based safety net).
A stack that did not settle (a write refused, an error) is looked at again after a per-key
delay that doubles with each unsettled run, from `retry_seconds` up to `retry_max_seconds`
(client-go's per-item exponential backoff): a stack broken for an hour costs a look every few
minutes, not every few seconds. A settled run, or the stack's deletion, resets it; a watch
event still runs the key at once whatever its delay, so a fix is seen without waiting.

Keys a watch event (or the autoscaler) brought are taken before those the resync or a retry
timer brought: the resync is a safety net that re-queues every stack at once, and behind it a
stack whose pods just went Ready would wait for hundreds of look-alike runs. A waiting key that
gets an event moves to the front line.

The queue belongs to the event loop (asyncio primitives are not thread-safe: a semaphore released
from another thread can lose a wake-up or a count, and a lost count stops the workers). `add` and
`forget` refuse a call from any other thread instead of corrupting it quietly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from h2ogpt_operator import metrics

Key = tuple[str, str]  # (namespace, name)
Worker = Callable[[Key], Awaitable[bool]]  # returns whether the stack settled (no retry needed)

log = logging.getLogger(__name__)


def _on_the_event_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(f"{what} must be called on the event loop, not from a thread") from None


class WorkQueue:
    def __init__(
        self,
        worker: Worker,
        *,
        workers: int,
        resync_seconds: float,
        retry_seconds: float,
        retry_max_seconds: float = 300.0,
    ) -> None:
        self._worker = worker
        self._workers = workers
        self._resync_seconds = resync_seconds
        self._retry_seconds = retry_seconds
        self._retry_max_seconds = max(retry_max_seconds, retry_seconds)
        # Waiting keys in order, each in one line (watch events first, then resync and retries), with
        # when it was enqueued (monotonic).
        self._news: OrderedDict[Key, float] = OrderedDict()
        self._routine: OrderedDict[Key, float] = OrderedDict()
        self._available = asyncio.Semaphore(0)  # one per waiting key
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._failures: dict[Key, int] = {}  # unsettled runs in a row
        self._retry_timers: dict[Key, asyncio.TimerHandle] = {}
        self.known: set[Key] = set()

    def add(self, key: Key, *, news: bool = True) -> None:
        """Queue `key`; `news=False` for the resync's and the retry timers' routine looks."""
        _on_the_event_loop("WorkQueue.add")
        self.known.add(key)
        self._cancel_retry(key)  # it runs now; a pending retry would only repeat it
        if key in self._running:
            self._dirty.add(key)
        elif key in self._routine:
            if news:  # moves up, keeping when it was first enqueued
                self._news[key] = self._routine.pop(key)
        elif key not in self._news:
            (self._news if news else self._routine)[key] = time.monotonic()
            self._available.release()
            metrics.WORKQUEUE_DEPTH.set(self._depth())

    def _depth(self) -> int:
        return len(self._news) + len(self._routine)

    def retry_delay(self, key: Key) -> float:
        """The delay before the next look at an unsettled key: doubles with each failure in a row."""
        failures = max(self._failures.get(key, 1), 1)
        return float(min(self._retry_seconds * 2 ** min(failures - 1, 30), self._retry_max_seconds))

    def add_later(self, key: Key, delay: float) -> None:
        self._cancel_retry(key)
        self._retry_timers[key] = asyncio.get_running_loop().call_later(delay, self._retry, key)
        metrics.WORKQUEUE_RETRYING.set(len(self._retry_timers))

    def _retry(self, key: Key) -> None:
        self._retry_timers.pop(key, None)
        metrics.WORKQUEUE_RETRYING.set(len(self._retry_timers))
        if key in self.known:
            self.add(key, news=False)

    def _cancel_retry(self, key: Key) -> None:
        timer = self._retry_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
            metrics.WORKQUEUE_RETRYING.set(len(self._retry_timers))

    def forget(self, key: Key) -> None:
        _on_the_event_loop("WorkQueue.forget")
        self.known.discard(key)
        self._failures.pop(key, None)
        self._cancel_retry(key)

    async def run(self, may_work: asyncio.Event) -> None:
        """Process keys (only while `may_work` is set: the leader Lease is held)."""
        await may_work.wait()
        tasks = [
            asyncio.create_task(self._work(), name=f"reconcile-worker-{i}") for i in range(self._workers)
        ]
        tasks.append(asyncio.create_task(self._resync(), name="resync"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self._resync_seconds)
            for key in list(self.known):
                if key not in self._retry_timers:  # a backing-off key keeps its own pace
                    self.add(key, news=False)

    async def _work(self) -> None:
        while True:
            await self._available.acquire()
            key, enqueued = (self._news or self._routine).popitem(last=False)
            metrics.WORKQUEUE_DEPTH.set(self._depth())
            metrics.WORKQUEUE_QUEUE_DURATION.observe(time.monotonic() - enqueued)
            self._running.add(key)
            settled = True
            try:
                settled = await self._worker(key)
            except Exception:  # a failing stack must not stop the others; retry it later
                log.exception("reconcile of %s/%s failed", *key)
                settled = False
            finally:
                self._running.discard(key)
            if settled or key not in self.known:
                self._failures.pop(key, None)
            else:
                self._failures[key] = self._failures.get(key, 0) + 1
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif not settled and key in self.known:
                metrics.WORKQUEUE_RETRIES.inc()
                self.add_later(key, self.retry_delay(key))
