"""OpenAI-compatible servers that send no usage when streaming (llama-cpp-python's server).

The server here is a small real SSE server on loopback that streams the way llama-cpp-python's
`llama_cpp.server` 0.3 does: one chunk per token, a last chunk with `finish_reason` and an empty
delta, then `[DONE]`, and no usage chunk whatever `stream_options` asks.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from h2ogpt_api.backends.base import BackendError, BackendRequest, Sampling, StreamEnd, TokenDelta
from h2ogpt_api.backends.openai_compat import OpenAICompatBackend, context_room
from h2ogpt_api.prompts import ChatMessage

from tests.support.loopback_http import serve_on_loopback

TOKENS = ["Hello", ",", " I", " am", " Smol"]
PROXY_LOGIN = "corp user:p@ss:word"  # what the proxy takes; in a URL it is percent-encoded


def _chunk(delta: dict[str, str], finish: str | None) -> dict[str, object]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.startswith("http://"):  # asked as a proxy: answer as the server it names
                if request["model"] == "needs-proxy-login" and self.headers.get("Proxy-Authorization") != (
                    "Basic " + base64.b64encode(PROXY_LOGIN.encode()).decode()
                ):
                    self.send_response(407)  # as a proxy does when its login is missing or wrong
                    self.send_header("Proxy-Authenticate", 'Basic realm="proxy"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request["model"] = f"proxied to {self.path}"
            # The test picks how the stream ends through the model name.
            ending = request["model"]
            chunks = [_chunk({"role": "assistant"}, None)]
            chunks += [_chunk({"content": token}, None) for token in TOKENS]
            if ending == "finishes":
                chunks.append(_chunk({}, "length"))
            elif ending == "reports-usage" or ending.startswith("proxied to "):
                chunks.append(_chunk({}, "stop"))
                chunks.append({**_chunk({}, None), "choices": [],
                               "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})
            body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with serve_on_loopback(Handler) as url:
        yield f"{url}/v1"


def _events(base_url: str, model: str) -> list[object]:
    async def collect() -> list[object]:
        backend = OpenAICompatBackend(base_url, kind="openai", model_name=model, timeout=10)
        request = BackendRequest(
            messages=(ChatMessage(role="user", content="Who are you?"),), sampling=Sampling(max_new_tokens=5)
        )
        try:
            return [event async for event in backend.stream(request)]
        finally:
            await backend.aclose()

    return asyncio.run(collect())


def test_a_stream_without_usage_counts_its_chunks(server: str) -> None:
    events = _events(server, "finishes")
    deltas = events[:-1]
    # Chunks that arrive together come on as one delta (bench/openai_proxy.py: the cost per token).
    assert all(isinstance(delta, TokenDelta) for delta in deltas)
    assert "".join(delta.text for delta in deltas) == "".join(TOKENS)  # type: ignore[union-attr]
    assert sum(delta.tokens for delta in deltas) == len(TOKENS)  # type: ignore[union-attr]
    # One token per chunk; the prompt's size is unknown.
    assert events[-1] == StreamEnd(prompt_tokens=0, completion_tokens=5, finish_reason="length")


def test_reported_usage_wins(server: str) -> None:
    events = _events(server, "reports-usage")
    assert events[-1] == StreamEnd(prompt_tokens=7, completion_tokens=5, finish_reason="stop")


def test_a_stream_cut_before_its_finish_is_an_error(server: str) -> None:
    with pytest.raises(BackendError, match="ended without a finish reason or usage") as caught:
        _events(server, "cut-short")
    assert caught.value.kind == "bad_response"


@pytest.mark.parametrize(
    ("message", "room"),
    [
        (
            "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens "
            "(100 in the messages, 2000 in the completion). Please reduce the length of the messages or "
            "completion.",
            1948,
        ),
        (
            "'max_tokens' or 'max_completion_tokens' is too large: 3000. This model's maximum context length "
            "is 4096 tokens and your request has 1500 input tokens (3000 > 4096 - 1500).",
            2596,
        ),
        ("Error code: 422 - {'error': '`inputs` tokens + `max_new_tokens` must be <= 40. Given: 4 `inputs` "
         "tokens and 1000 `max_new_tokens`', 'error_type': 'validation'}", 36),
        ("model 'x' not found", None),
    ],
)
def test_context_room_reads_vllms_and_tgis_refusals(message: str, room: int | None) -> None:
    assert context_room(message) == room


def test_the_proxy_environment_applies(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A name that does not resolve: only a proxy, which takes the whole URL, can reach it.
    monkeypatch.setenv("HTTP_PROXY", server.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    events = _events("http://inference.invalid:8000/v1", "any")
    assert events[-1] == StreamEnd(prompt_tokens=7, completion_tokens=5, finish_reason="stop")


def test_the_proxy_login_in_its_url_is_sent_to_it(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # HTTP_PROXY=http://user:password@proxy:port, as httpx and the `openai` client read it: the login
    # (percent-decoded) goes to the proxy as Proxy-Authorization, and nowhere else.
    proxy = server.removesuffix("/v1").replace("http://", "http://corp%20user:p%40ss%3Aword@")
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    events = _events("http://inference.invalid:8000/v1", "needs-proxy-login")
    assert events[-1] == StreamEnd(prompt_tokens=7, completion_tokens=5, finish_reason="stop")
