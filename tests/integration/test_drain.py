"""`h2ogpt-api --drain_seconds`: after SIGTERM the real server keeps answering a keep-alive client for the
drain, every answer closing its connection, then exits; a second signal stops it at once."""

from __future__ import annotations

import signal
import time

import httpx

from tests.support.api_server import llm_only_args, run_api_server
from tests.support.tgi_fake import RunningFake

DRAIN_S = 3.0


def test_a_stop_signal_drains_then_exits(tgi_fake: RunningFake) -> None:
    with run_api_server([*llm_only_args(tgi_fake.url, "m"), "--drain_seconds", str(DRAIN_S)]) as server:
        health = server.base_url + "/health"
        with httpx.Client(timeout=5) as client:
            before = client.get(health)
            assert before.status_code == 200
            assert before.headers.get("connection") != "close"  # kept alive while not draining

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.2)  # the signal reaches the server's loop (a request sent at once may come first)
            answers: list[tuple[float, int, str | None]] = []
            failures: list[tuple[float, str]] = []
            while server.process.poll() is None and time.monotonic() - signalled < DRAIN_S + 10:
                try:
                    response = client.get(health)
                    answers.append((time.monotonic() - signalled, response.status_code,
                                    response.headers.get("connection")))
                except httpx.HTTPError as error:
                    failures.append((time.monotonic() - signalled, repr(error)))
                time.sleep(0.02)
            exited_after = time.monotonic() - signalled
            server.process.wait(10)

    assert server.process.returncode == 0
    # Answered all through the drain, each answer closing its connection so the client reconnects.
    assert answers
    assert all(status == 200 and connection == "close" for _, status, connection in answers)
    assert answers[-1][0] >= DRAIN_S - 0.5, answers[-1]
    # Nothing failed in the drain: only once the server stopped listening (refused) may a request fail.
    assert not [failure for failure in failures if failure[0] < DRAIN_S - 0.2], failures[:3]
    assert DRAIN_S - 0.2 <= exited_after < DRAIN_S + 8, exited_after


def test_a_second_signal_stops_at_once(tgi_fake: RunningFake) -> None:
    with run_api_server([*llm_only_args(tgi_fake.url, "m"), "--drain_seconds", "60"]) as server:
        assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert server.process.poll() is None  # draining
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        server.process.wait(15)
        assert time.monotonic() - signalled < 10
        assert server.process.returncode == 0
