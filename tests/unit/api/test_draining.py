"""The drain's ASGI wrapper and its stop-signal handling (h2ogpt_api.draining), on a tiny ASGI app."""

from __future__ import annotations

import asyncio
from typing import Any

from h2ogpt_api.draining import Drain


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    headers = [(b"content-type", b"text/plain"), (b"Connection", b"keep-alive")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def _sent(drain: Drain, scope_type: str = "http") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        messages.append(message)

    asyncio.run(drain.wrap(_answer)({"type": scope_type}, receive, send))
    return messages


def test_answers_are_untouched_until_a_drain() -> None:
    start, body = _sent(Drain(5))
    assert start["headers"] == [(b"content-type", b"text/plain"), (b"Connection", b"keep-alive")]
    assert body == {"type": "http.response.body", "body": b"ok"}


def test_in_a_drain_every_answer_closes_its_connection_and_says_so_once() -> None:
    drain = Drain(5)
    drain.draining = True
    start, body = _sent(drain)
    assert start["headers"] == [(b"content-type", b"text/plain"), (b"connection", b"close")]
    assert body == {"type": "http.response.body", "body": b"ok"}


def test_a_websocket_is_left_alone_in_a_drain() -> None:
    drain = Drain(5)
    drain.draining = True
    start, _ = _sent(drain, "websocket")
    assert (b"connection", b"close") not in start["headers"]


def _signals(drain: Drain, count: int, run_for_s: float) -> list[tuple[str, float]]:
    """Deliver `count` stop signals at once; which of `stop` and `force` was called, and when (loop time)."""
    async def scenario() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        calls: list[tuple[str, float]] = []
        started = loop.time()
        for _ in range(count):
            drain.on_stop_signal(
                lambda: calls.append(("stop", loop.time() - started)),
                lambda: calls.append(("force", loop.time() - started)),
            )
        await asyncio.sleep(run_for_s)
        return calls

    return asyncio.run(scenario())


def test_the_first_signal_starts_the_drain_and_stops_after_it() -> None:
    drain = Drain(0.2)
    calls = _signals(drain, 1, 0.4)
    assert drain.draining
    assert [call for call, _ in calls] == ["stop"]
    assert 0.2 <= calls[0][1] < 0.35


def test_a_second_signal_forces_at_once() -> None:
    calls = _signals(Drain(30), 2, 0.05)
    assert [call for call, _ in calls] == ["force"]
    assert calls[0][1] < 0.05


def test_without_a_drain_the_first_signal_stops_at_once_and_a_second_forces() -> None:
    drain = Drain(0)
    calls = _signals(drain, 2, 0.05)
    assert not drain.draining
    assert [call for call, _ in calls] == ["stop", "force"]
    assert calls[1][1] < 0.05
