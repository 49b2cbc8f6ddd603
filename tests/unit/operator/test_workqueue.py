"""The work queue: one reconcile per stack at a time, bursts coalesced, changes mid-run not lost."""

from __future__ import annotations

import asyncio

from h2ogpt_operator.workqueue import Key, WorkQueue


def test_bursts_coalesce_and_a_change_during_a_run_runs_again() -> None:
    async def scenario() -> list[Key]:
        runs: list[Key] = []
        release = asyncio.Event()
        concurrent = 0

        async def worker(key: Key) -> bool:
            nonlocal concurrent
            concurrent += 1
            assert concurrent == 1, "the same stack was reconciled twice at once"
            runs.append(key)
            if len(runs) == 1:
                await release.wait()
            concurrent -= 1
            return True

        queue = WorkQueue(worker, workers=3, resync_seconds=3600, retry_seconds=3600)
        leader = asyncio.Event()
        leader.set()
        task = asyncio.create_task(queue.run(leader))
        key = ("ns", "a")
        queue.add(key)
        await asyncio.sleep(0.05)
        for _ in range(10):  # a burst while the first run is in progress
            queue.add(key)
        release.set()
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return runs

    assert asyncio.run(scenario()) == [("ns", "a"), ("ns", "a")]


def test_nothing_runs_before_the_lease_and_unsettled_stacks_retry() -> None:
    async def scenario() -> tuple[int, int]:
        runs: list[Key] = []

        async def worker(key: Key) -> bool:
            runs.append(key)
            return False  # not settled: look again after retry_seconds

        queue = WorkQueue(worker, workers=1, resync_seconds=3600, retry_seconds=0.02)
        leader = asyncio.Event()
        task = asyncio.create_task(queue.run(leader))
        queue.add(("ns", "b"))
        await asyncio.sleep(0.05)
        before_lease = len(runs)
        leader.set()
        await asyncio.sleep(0.2)
        queue.forget(("ns", "b"))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return before_lease, len(runs)

    before_lease, total = asyncio.run(scenario())
    assert before_lease == 0
    assert total >= 3
