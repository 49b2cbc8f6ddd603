"""A keyed work queue: every watch event enqueues its stack; one reconcile per stack at a time.

Events arrive in bursts (a rollout touches a Deployment, a ReplicaSet's pods, the status); keys
already waiting are coalesced, and a key that changes while it is being reconciled runs once
more afterwards. Every known key is re-queued each `resync_seconds` (level-based safety net),
and a stack that is not Ready yet is looked at again after `retry_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

Key = tuple[str, str]  # (namespace, name)
Worker = Callable[[Key], Awaitable[bool]]  # returns whether the stack settled (no retry needed)

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(self, worker: Worker, *, workers: int, resync_seconds: float, retry_seconds: float) -> None:
        self._worker = worker
        self._workers = workers
        self._resync_seconds = resync_seconds
        self._retry_seconds = retry_seconds
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._waiting: set[Key] = set()
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self.known: set[Key] = set()

    def add(self, key: Key) -> None:
        self.known.add(key)
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    def add_later(self, key: Key, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self._add_if_known, key)

    def _add_if_known(self, key: Key) -> None:
        if key in self.known:
            self.add(key)

    def forget(self, key: Key) -> None:
        self.known.discard(key)

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
                self.add(key)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._waiting.discard(key)
            self._running.add(key)
            settled = True
            try:
                settled = await self._worker(key)
            except Exception:  # a failing stack must not stop the others; retry it later
                log.exception("reconcile of %s/%s failed", *key)
                settled = False
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif not settled and key in self.known:
                self.add_later(key, self._retry_seconds)
