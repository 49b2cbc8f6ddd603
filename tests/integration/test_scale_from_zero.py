"""Scale from zero, over real sockets: `h2ogpt-api --hold_seconds` in front of a TGI address where
nothing listens yet (what a Service without endpoints looks like to a client: connection refused).

Requests are held, counted in `h2ogpt_api_held_requests`, kept alive with SSE comments, and
answered once the TGI fake starts on that port: none is lost. With no server ever, each gets 503
+ Retry-After when the wait is over; past `--max_held`, at once.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.api_server import ApiServer, ApiServerFactory, llm_only_args
from tests.support.tgi_fake import RunningFake, TgiFake, free_port

MODEL = "fake/tgi-echo"


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def start(api_server_factory: ApiServerFactory, port: int, *flags: str) -> ApiServer:
    return api_server_factory([*llm_only_args(f"http://127.0.0.1:{port}", MODEL), *flags])


def chat(server: ApiServer, text: str) -> str:
    with OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0, timeout=120) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=8
        )
    return answer.choices[0].message.content or ""


def chat_stream(server: ApiServer, text: str) -> str:
    with OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0, timeout=120) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=8, stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def raw_stream_lines(server: ApiServer, text: str) -> list[str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{server.openai_url}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def test_held_requests_are_answered_when_the_server_starts_late(api_server_factory: ApiServerFactory) -> None:
    port = free_port()
    server = start(api_server_factory, port, "--hold_seconds", "60", "--keepalive_seconds", "0.3")
    with concurrent.futures.ThreadPoolExecutor(max_workers=21) as pool:
        plain = [pool.submit(chat, server, f"plain question {i}") for i in range(10)]
        streamed = [pool.submit(chat_stream, server, f"streamed question {i}") for i in range(10)]
        raw = pool.submit(raw_stream_lines, server, "raw question")
        wait_until(lambda: server.metric("h2ogpt_api_held_requests") == 21)
        time.sleep(1.0)  # held a while: the raw stream gets its keepalive comments
        assert not any(f.done() for f in [*plain, *streamed, raw])
        fake = RunningFake(TgiFake(), port=port).start()
        try:
            answers = [f.result(timeout=60) for f in plain + streamed]
            lines = raw.result(timeout=60)
        finally:
            fake.stop()
    for index, answer in enumerate(answers[:10]):
        assert f"plain question {index}" in answer
    for index, answer in enumerate(answers[10:]):
        assert f"streamed question {index}" in answer
    # The role chunk, then a comment per keepalive while held, then the answer.
    assert any(line.startswith(": waiting for an inference replica") for line in lines[1:3])
    assert lines[-1] == "data: [DONE]"
    assert any("raw" in line for line in lines if line.startswith("data: {"))
    assert server.metric("h2ogpt_api_held_requests") == 0
    assert server.metric("h2ogpt_api_held_wait_seconds_count", outcome="forwarded") == 21
    assert server.metric("h2ogpt_api_held_wait_seconds_sum", outcome="forwarded") >= 21 * 1.0


def test_no_server_within_the_wait_is_503_with_retry_after(api_server_factory: ApiServerFactory) -> None:
    server = start(api_server_factory, free_port(), "--hold_seconds", "1.5")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        chat(server, "anyone there")
    waited = time.monotonic() - started
    assert 1.5 <= waited < 10
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "2"
    error = caught.value.response.json()["error"]
    assert error["code"] == "no_replica"
    assert error["type"] == "server_error"
    assert "no inference replica became ready within 1.5 s" in error["message"]
    assert server.metric("h2ogpt_api_held_requests") == 0
    assert server.metric("h2ogpt_api_held_wait_seconds_count", outcome="timed_out") == 1


def test_a_stream_held_past_a_keepalive_ends_with_an_openai_error_event(
    api_server_factory: ApiServerFactory,
) -> None:
    """Once a keepalive comment went out the status line is sent: the 503 becomes the stream's error."""
    server = start(api_server_factory, free_port(), "--hold_seconds", "1.5", "--keepalive_seconds", "0.3")
    lines = raw_stream_lines(server, "anyone there")
    assert sum(line.startswith(": waiting for an inference replica") for line in lines) >= 2
    errors = [line for line in lines if '"error"' in line]
    assert len(errors) == 1
    assert '"code":"no_replica"' in errors[0].replace(" ", "")


def test_a_full_hold_queue_refuses_at_once_and_loses_none_held(api_server_factory: ApiServerFactory) -> None:
    port = free_port()
    server = start(api_server_factory, port, "--hold_seconds", "60", "--max_held", "2")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(chat, server, f"held {i}") for i in range(2)]
        wait_until(lambda: server.metric("h2ogpt_api_held_requests") == 2)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            chat(server, "one too many")
        assert time.monotonic() - started < 1.0
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "60"
        assert (
            "2 requests are already held (--max_held 2)" in caught.value.response.json()["error"]["message"]
        )
        fake = RunningFake(TgiFake(), port=port).start()
        try:
            assert [f"held {i}" in f.result(timeout=60) for i, f in enumerate(held)] == [True, True]
        finally:
            fake.stop()


def test_without_hold_seconds_an_absent_server_is_503_at_once(api_server_factory: ApiServerFactory) -> None:
    server = start(api_server_factory, free_port())
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        chat(server, "anyone there")
    assert time.monotonic() - started < 5
    assert caught.value.status_code == 503
    assert caught.value.response.json()["error"]["code"] == "backend_unavailable"
    assert "retry-after" not in caught.value.response.headers


def test_a_stream_cut_after_its_first_token_is_never_sent_again(api_server_factory: ApiServerFactory) -> None:
    """Holding retries only what never reached a model: a drop mid-answer is an error, not a resend."""
    fake = RunningFake(TgiFake()).start()
    try:
        server = api_server_factory(
            [*llm_only_args(fake.url, MODEL), "--hold_seconds", "30", "--keepalive_seconds", "0.3"]
        )
        lines = raw_stream_lines(server, "FAKE:DROP one two three four five six")
        assert sum('"error"' in line for line in lines) == 1
        assert fake.fake.stats.started == 1
        with pytest.raises(openai.APIStatusError) as caught:
            chat(server, "FAKE:500 fails before any token")
        assert caught.value.status_code == 502  # a server error is not "no replica": not held
        assert fake.fake.stats.started == 2
        assert server.metric("h2ogpt_api_held_wait_seconds_count") == 0  # no request was ever held
    finally:
        fake.stop()
