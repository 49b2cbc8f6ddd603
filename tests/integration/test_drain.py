"""`h2ogpt-api --drain_seconds`: after SIGTERM the real server keeps answering a keep-alive client for the
drain, every answer closing its connection, then exits; a second signal stops it at once. With
`--workers`, a worker that finishes first does not cut another's streams short."""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest

from tests.support.api_server import llm_only_args, run_api_server
from tests.support.tgi_fake import RunningFake, TgiFake

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


@pytest.mark.parametrize("delivered", ["to-the-process", "to-its-group"])
def test_with_workers_a_stop_signal_lets_every_worker_finish_its_streams(delivered: str) -> None:
    # A stream longer than the drain plus the 15 s the supervisor gives workers it stops itself: it
    # runs on one worker while the other, idle, exits as soon as its drain ends. The signal comes as
    # Kubernetes sends it (to the container's first process) or as a terminal's Ctrl-C does (SIGINT
    # to the foreground process group).
    tokens, token_delay = 100, 0.2
    slow = RunningFake(TgiFake(token_delay=token_delay, repeat=True)).start()
    try:
        args = [*llm_only_args(slow.url, "m"), "--workers", "2", "--drain_seconds", "1"]
        with run_api_server(args, own_session=True) as server:
            client = openai.OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0, timeout=60)
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "go"}], max_tokens=tokens, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = iter(stream)
            next(chunks)  # the stream has begun on one of the workers
            if delivered == "to-its-group":
                os.killpg(server.process.pid, signal.SIGINT)
            else:
                server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            rest = list(chunks)
            server.process.wait(30)
            exited_after = time.monotonic() - signalled
    finally:
        slow.stop()
    usage = rest[-1].usage
    assert usage is not None
    assert usage.completion_tokens == tokens  # the whole answer, not cut when the idle worker exited
    assert server.process.returncode == 0
    assert exited_after > tokens * token_delay - 2, exited_after


def test_an_open_browser_tab_does_not_keep_a_stopping_gradio_server_alive(tgi_fake: RunningFake) -> None:
    # Each Gradio page holds a heartbeat stream open for its life; the server, which waits for open
    # connections when it stops, must end those itself.
    args = [*llm_only_args(tgi_fake.url, "m"), "--gradio", "True", "--drain_seconds", "1"]
    with run_api_server(args) as server:
        assert server.gradio_url is not None
        heartbeat = server.gradio_url.rstrip("/") + "/gradio_api/heartbeat/a-browser-tab"
        with httpx.Client(timeout=30) as client, client.stream("GET", heartbeat) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(lines) == "data: ALIVE"
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            server.process.wait(20)
            exited_after = time.monotonic() - signalled
    assert server.process.returncode == 0
    assert exited_after < 8, exited_after
