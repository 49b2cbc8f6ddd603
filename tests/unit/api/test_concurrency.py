"""The admission limit: chosen from the flag or the backend, shared by workers; the gate that
applies it (first come first served, resizable while serving, cancellation-safe)."""

from __future__ import annotations

import asyncio

import pytest
from h2ogpt_api.concurrency import choose
from h2ogpt_api.core import AdmissionGate, QueueFullError


def test_the_flag_wins_over_what_the_backend_reports() -> None:
    assert choose(8, 1024, "tgi").limit == 8


def test_by_default_the_backends_limit_and_none_when_it_reports_none() -> None:
    assert choose(None, 1024, "tgi").limit == 1024
    assert choose(None, None, "vllm").limit is None
    assert "no limit of our own" in choose(None, None, "vllm").describe()


def test_workers_share_the_limit_rounded_up_never_below_it_in_all() -> None:
    assert choose(None, 1024, "tgi", workers=3).limit == 342  # 3 x 342 >= 1024
    assert choose(5, None, "tgi", workers=2).limit == 3


async def _hold(gate: AdmissionGate, order: list[int], index: int, release: asyncio.Event) -> None:
    async with gate.slot():
        order.append(index)
        await release.wait()


def test_the_gate_admits_in_arrival_order_and_grows_when_the_limit_is_raised() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(2, max_queue=10)
        order: list[int] = []
        release = asyncio.Event()
        tasks = [asyncio.create_task(_hold(gate, order, index, release)) for index in range(5)]
        await asyncio.sleep(0.01)
        assert order == [0, 1]
        gate.set_limit(4)  # the backend told a larger limit: two more start at once
        await asyncio.sleep(0.01)
        assert order == [0, 1, 2, 3]
        gate.set_limit(None)
        await asyncio.sleep(0.01)
        assert order == [0, 1, 2, 3, 4]
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_a_full_queue_refuses_and_a_cancelled_waiter_frees_its_place() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(1, max_queue=1)
        order: list[int] = []
        release = asyncio.Event()
        running = asyncio.create_task(_hold(gate, order, 0, release))
        waiting = asyncio.create_task(_hold(gate, order, 1, release))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            async with gate.slot():
                pass
        waiting.cancel()
        await asyncio.sleep(0.01)
        late = asyncio.create_task(_hold(gate, order, 2, release))  # the cancelled place is free
        release.set()
        await asyncio.gather(running, late)
        assert order == [0, 2]
        async with gate.slot():  # nothing leaked: a slot is free again
            pass

    asyncio.run(scenario())
