"""Tokens that reach the TGI backend together leave it as one delta, with the same text.

When the proxy falls behind, TGI's events pile up in the socket; the backend passes on what has
arrived as one delta (one write to the client instead of one per token). The server here is a
small real SSE server on loopback speaking TGI's two streaming routes; it either writes the whole
answer at once ("together": what a proxy that fell behind finds waiting) or one event at a time
with a pause between ("apart": a proxy that keeps up).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from h2ogpt_api.backends.base import (
    BackendError,
    BackendEvent,
    BackendRequest,
    OutputOptions,
    Sampling,
    StreamEnd,
    TokenDelta,
)
from h2ogpt_api.backends.sse import MAX_EVENT_BYTES
from h2ogpt_api.backends.tgi import TgiBackend
from h2ogpt_api.prompts import ChatMessage

from tests.support.loopback_http import serve_on_loopback

TOKENS = ["Hello", ",", " I", " am", " Smol", "LM", "."]


def _chat_events(model: str) -> list[str]:
    def chunk(delta: dict[str, str], finish: str | None) -> str:
        return json.dumps({
            "id": "1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        })  # fmt: skip

    events = [chunk({"role": "assistant", "content": token}, None) for token in TOKENS]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 9, "completion_tokens": len(TOKENS), "total_tokens": 9 + len(TOKENS)}
    events.append(json.dumps({"id": "1", "choices": [], "usage": usage}))
    return [*events, "[DONE]"]


def _generate_events() -> list[str]:
    events = [
        {"index": i, "token": {"id": i, "text": token, "logprob": -0.5, "special": False}, "top_tokens": []}
        for i, token in enumerate(TOKENS)
    ]
    details = {"finish_reason": "eos_token", "generated_tokens": len(TOKENS)}
    events[-1] |= {"generated_text": "".join(TOKENS), "details": details}
    return [json.dumps(event) for event in events]


@pytest.fixture(scope="module")
def tgi() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize":
                self._send([json.dumps([{"id": 1}] * 9).encode()])
                return
            # The test picks how the server writes through the model name (chat) or the prompt.
            how = request.get("model") or request.get("inputs")
            events = _chat_events(how) if self.path == "/v1/chat/completions" else _generate_events()
            if how == "overlong":
                self._send([b"data: " + b"x" * (MAX_EVENT_BYTES + 10)])
                return
            pieces = [f"data: {event}\n\n".encode() for event in events]
            self._send([b"".join(pieces)] if how == "together" else pieces)

        def _send(self, pieces: list[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(sum(len(piece) for piece in pieces)))
            self.end_headers()
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
                if len(pieces) > 1:
                    time.sleep(0.03)  # long enough that the client reads each event on its own

    with serve_on_loopback(Handler) as url:
        yield url


def _stream(
    base_url: str,
    how: str,
    *,
    chat: bool,
    stop: tuple[str, ...] = (),
    options: OutputOptions | None = None,
) -> list[BackendEvent]:
    async def collect() -> list[BackendEvent]:
        backend = TgiBackend(base_url, model_name=how, timeout=10)
        request = BackendRequest(
            messages=(ChatMessage(role="user", content="Who are you?"),),
            sampling=Sampling(max_new_tokens=len(TOKENS), stop=stop),
            prompt=None if chat else how,
            options=options or OutputOptions(),
        )
        try:
            return [event async for event in backend.stream(request)]
        finally:
            await backend.aclose()

    return asyncio.run(collect())


def _deltas(events: list[BackendEvent]) -> list[TokenDelta]:
    return [event for event in events if isinstance(event, TokenDelta)]


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "generate"])
def test_tokens_that_arrive_together_are_one_delta(tgi: str, chat: bool) -> None:
    events = _stream(tgi, "together", chat=chat)
    assert _deltas(events) == [TokenDelta("".join(TOKENS), tokens=len(TOKENS))]
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].completion_tokens == len(TOKENS)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "generate"])
def test_tokens_that_arrive_apart_are_a_delta_each(tgi: str, chat: bool) -> None:
    events = _stream(tgi, "apart", chat=chat)
    assert _deltas(events) == [TokenDelta(token) for token in TOKENS]
    assert isinstance(events[-1], StreamEnd)


@pytest.mark.parametrize("how", ["together", "apart"])
def test_a_stop_sequence_split_across_tokens_is_cut_either_way(tgi: str, how: str) -> None:
    # " Smol" + "LM": the stop sequence spans two tokens, which may or may not arrive together.
    events = _stream(tgi, how, chat=True, stop=("olLM",))
    assert "".join(delta.text for delta in _deltas(events)) == "Hello, I am Sm"


def test_tokens_with_logprobs_stay_one_delta_each(tgi: str) -> None:
    events = _stream(tgi, "together", chat=False, options=OutputOptions(logprobs=True))
    deltas = _deltas(events)
    assert [delta.text for delta in deltas] == TOKENS
    assert all(len(delta.logprobs) == 1 and delta.tokens == 1 for delta in deltas)


def test_an_event_over_the_line_limit_is_a_clear_error(tgi: str) -> None:
    with pytest.raises(BackendError, match="event of over") as caught:
        _stream(tgi, "overlong", chat=True)
    assert caught.value.kind == "bad_response"
