"""The operator's own loops: a failure that ends one stops the process loudly instead of leaving it
alive and doing nothing, and an unanswered Lease renewal is a failed renewal, not a dead elector."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
import urllib3
from h2ogpt_operator.cli import stop_when_one_ends
from h2ogpt_operator.kube import Kube
from h2ogpt_operator.leader import LeaderElector
from kubernetes import client


def test_a_loop_that_dies_stops_the_operator_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[list[str], bool]:
        async def broken() -> None:
            await asyncio.sleep(0.01)
            raise KeyError("dictionary is empty")

        async def forever() -> None:
            await asyncio.sleep(3600)

        stop = asyncio.Event()
        tasks = [asyncio.create_task(broken(), name="work-queue"), asyncio.create_task(forever(), name="x")]
        failed = stop_when_one_ends(tasks, stop)
        await asyncio.wait_for(stop.wait(), 5)
        tasks[1].cancel()  # the operator's shutdown: a cancelled loop is not a failure
        await asyncio.gather(*tasks, return_exceptions=True)
        return failed, stop.is_set()

    with caplog.at_level(logging.CRITICAL, logger="h2ogpt_operator"):
        failed, stopped = asyncio.run(scenario())
    assert stopped
    assert failed == ["work-queue"]
    [record] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert record.getMessage() == "work-queue ended ('dictionary is empty'); stopping the operator"
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError


def test_loops_ending_after_the_stop_are_not_failures() -> None:
    async def scenario() -> list[str]:
        async def stands_down() -> None:  # the elector, after a lost Lease, calls stop.set() and returns
            stop.set()

        stop = asyncio.Event()
        task = asyncio.create_task(stands_down(), name="leader-election")
        failed = stop_when_one_ends([task], stop)
        await task
        await asyncio.sleep(0)
        return failed

    assert asyncio.run(scenario()) == []


def test_an_apiserver_that_does_not_answer_is_a_failed_renewal_not_a_dead_elector(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    elector = LeaderElector(
        Kube(client.ApiClient(configuration)), "default", "lease", "me", lease_seconds=3, renew_seconds=1
    )
    # What urllib3 raises here is not an OSError; the elector once caught only those and died of it.
    with pytest.raises(urllib3.exceptions.HTTPError) as raised:
        elector.try_acquire_or_renew()
    assert not isinstance(raised.value, OSError)
    with caplog.at_level(logging.WARNING, logger="h2ogpt_operator.leader"):
        assert asyncio.run(elector._attempt()) is False
    assert "leader election:" in caplog.text
