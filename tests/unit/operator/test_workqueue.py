"""The work queue: one reconcile per stack at a time, bursts coalesced, changes mid-run not lost."""

from __future__ import annotations

import asyncio
import itertools

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


def test_an_unsettled_stack_backs_off_exponentially_up_to_the_cap_and_a_success_resets_it() -> None:
    base, cap = 0.02, 0.08

    async def scenario() -> tuple[list[float], list[float], float]:
        times: list[float] = []
        delays: list[float] = []
        settle_at = 6  # runs 1..5 fail, run 6 settles

        async def worker(key: Key) -> bool:
            times.append(asyncio.get_running_loop().time())
            return len(times) >= settle_at

        queue = WorkQueue(worker, workers=1, resync_seconds=3600, retry_seconds=base, retry_max_seconds=cap)
        leader = asyncio.Event()
        leader.set()
        task = asyncio.create_task(queue.run(leader))
        key = ("ns", "broken")
        queue.add(key)
        while len(times) < settle_at:
            await asyncio.sleep(0.005)
            if len(delays) < len(times) and len(times) < settle_at:
                delays.append(queue.retry_delay(key))
        await asyncio.sleep(0.3)  # settled: no retry is scheduled any more
        after_success = queue.retry_delay(key)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert len(times) == settle_at, "a settled stack was retried"
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return delays, gaps, after_success

    delays, gaps, after_success = asyncio.run(scenario())
    assert delays == [0.02, 0.04, 0.08, 0.08, 0.08]
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay * 0.95  # a timer never fires early (loop clock granularity aside)
    assert after_success == base


def test_an_event_runs_a_backing_off_stack_at_once() -> None:
    async def scenario() -> float:
        times: list[float] = []

        async def worker(key: Key) -> bool:
            times.append(asyncio.get_running_loop().time())
            return False

        queue = WorkQueue(worker, workers=1, resync_seconds=3600, retry_seconds=30, retry_max_seconds=60)
        leader = asyncio.Event()
        leader.set()
        task = asyncio.create_task(queue.run(leader))
        queue.add(("ns", "c"))
        await asyncio.sleep(0.05)
        queue.add(("ns", "c"))  # a watch event while it waits out 30 s
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert len(times) == 2
        return times[1] - times[0]

    assert asyncio.run(scenario()) < 1.0


def test_watch_events_go_before_the_resyncs_routine_looks() -> None:
    """300 stacks re-queued by the resync must not stand between a pod going Ready and its stack."""

    async def scenario() -> list[Key]:
        runs: list[Key] = []
        release = asyncio.Event()

        async def worker(key: Key) -> bool:
            runs.append(key)
            if len(runs) == 1:
                await release.wait()
            return True

        queue = WorkQueue(worker, workers=1, resync_seconds=3600, retry_seconds=3600)
        leader = asyncio.Event()
        leader.set()
        task = asyncio.create_task(queue.run(leader))
        queue.add(("ns", "busy"))
        await asyncio.sleep(0.05)  # the one worker is busy with it
        for i in range(5):  # what the resync queues
            queue.add(("ns", f"routine-{i}"), news=False)
        queue.add(("ns", "event"))  # a watch event
        queue.add(("ns", "routine-3"))  # an event for a stack already waiting: it moves up
        queue.add(("ns", "routine-0"), news=False)  # already waiting: nothing changes
        release.set()
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return runs

    assert [name for _, name in asyncio.run(scenario())] == [
        "busy", "event", "routine-3", "routine-0", "routine-1", "routine-2", "routine-4"
    ]  # fmt: skip


def test_a_call_from_another_thread_is_refused_not_run() -> None:
    """asyncio's semaphore is not thread-safe: kopf once called `add` from its handler threads,
    and a lost count could leave every worker asleep with stacks waiting. Now that is an error."""

    async def scenario() -> tuple[str, str, set[Key]]:
        async def worker(key: Key) -> bool:
            return True

        queue = WorkQueue(worker, workers=1, resync_seconds=3600, retry_seconds=3600)
        errors = []
        for call in (lambda: queue.add(("ns", "c")), lambda: queue.forget(("ns", "c"))):
            try:
                await asyncio.to_thread(call)
            except RuntimeError as exc:
                errors.append(str(exc))
        return errors[0], errors[1], queue.known

    added, forgotten, known = asyncio.run(scenario())
    assert added == "WorkQueue.add must be called on the event loop, not from a thread"
    assert forgotten == "WorkQueue.forget must be called on the event loop, not from a thread"
    assert known == set()
