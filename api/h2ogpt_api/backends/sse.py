"""Streams from inference servers over aiohttp, shared by the TGI and OpenAI-compatible backends:
the SSE body's `data:` payloads in batches, the decoder of OpenAI-format chunks (TGI's chat route,
vLLM's and any OpenAI-compatible server's chat and completions routes), the connection pool, and
aiohttp's failures as BackendErrors.

aiohttp rather than httpx (or the `openai` client, built on httpx2): its C HTTP parser and line
reader, with orjson for each chunk, cost a fraction of a pure-Python stack per streamed token, which
is most of what a proxy spends at 64+ concurrent streams (bench/openai_proxy.py measures it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import orjson

from h2ogpt_api.backends.base import (
    CONNECT_TIMEOUT_S,
    POOL_IDLE_S,
    BackendError,
    BackendEvent,
    Sampling,
    StopTrimmer,
    StreamEnd,
    TokenDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    finish_reason_from,
)

# TGI's final `/generate_stream` event carries the whole generated_text on one line.
MAX_EVENT_BYTES = 2 << 20


def session(base_url: str, timeout: float, headers: Mapping[str, str] | None = None) -> aiohttp.ClientSession:
    """A connection pool to the server at `base_url`. Create it on first use: it belongs to the running
    event loop.

    No cap on connections (the core's admission bounds the requests in flight); idle ones close
    after POOL_IDLE_S. sock_read bounds every wait for data (the headers, then each piece of the
    stream); total=None lets a long generation run as long as it streams.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=POOL_IDLE_S),
        timeout=aiohttp.ClientTimeout(total=None, connect=min(timeout, CONNECT_TIMEOUT_S), sock_read=timeout),
        headers=headers,
        proxy=env_proxy(base_url),
        # A line may be TGI's final event with the whole generated_text: allow 2 MiB lines.
        read_bufsize=1 << 20,
    )


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY and NO_PROXY give for `url`, as httpx and the `openai` client read
    them (an external OpenAI server behind a company proxy); None for none. Looked up once per pool:
    aiohttp's own `trust_env` looks it up, and reads ~/.netrc, in a worker thread on every request
    (the lookup alone took 0.19 ms here, on the way to each first token). A login in the proxy's URL
    (`http://user:password@proxy:3128`, percent-encoded) goes to the proxy as Proxy-Authorization: the
    session's proxy URL carries it (tests/unit/api/test_openai_compat_usage.py)."""
    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if not proxy or not parts.hostname or proxy_bypass(parts.hostname):
        return None
    return proxy


def _sse_data(line: bytes) -> bytes | None:
    """The payload of an SSE `data:` line; None for comments, blank lines and other fields."""
    if not line.startswith(b"data:"):
        return None
    return line[5:].strip()


async def sse_batches(content: aiohttp.StreamReader, server: str) -> AsyncGenerator[list[bytes], None]:
    """An SSE body's `data:` payloads in batches: every whole event already received when one is read.

    At light load a batch is one token. When the proxy falls behind (many streams on few cores),
    tokens wait in the socket's buffer; taking them together, as one delta and one write to the
    client, keeps the cost per token from growing with the load, so the proxy catches up instead
    of falling further behind (bench/openai_proxy.py at 64 and 256 streams).
    """
    partial = b""
    while data := await content.readany():
        lines = (partial + data if partial else data).split(b"\n")
        partial = lines.pop()
        if len(partial) > MAX_EVENT_BYTES:
            raise BackendError("bad_response", f"{server} sent an event of over {MAX_EVENT_BYTES} bytes")
        batch = [payload for line in lines if (payload := _sse_data(line))]
        if batch:
            yield batch
    if payload := _sse_data(partial):
        yield [payload]


class TextRun:
    """Plain text pieces (no logprobs) of one batch, one per token, passed on as one delta."""

    __slots__ = ("pieces",)

    def __init__(self) -> None:
        self.pieces: list[str] = []

    def add(self, text: str) -> None:
        self.pieces.append(text)

    def flush_into(self, events: list[BackendEvent]) -> None:
        """Append the run so far as one delta (nothing when it is empty), and start a new one."""
        if self.pieces:
            text = self.pieces[0] if len(self.pieces) == 1 else "".join(self.pieces)
            events.append(TokenDelta(text, tokens=len(self.pieces)))
            self.pieces = []


def chat_logprobs(choice: dict[str, Any]) -> tuple[TokenLogprob, ...]:
    content = (choice.get("logprobs") or {}).get("content") or ()
    return tuple(
        TokenLogprob(
            token=entry["token"],
            logprob=float(entry["logprob"]),
            top=tuple(
                TopLogprob(top["token"], float(top["logprob"])) for top in entry.get("top_logprobs") or ()
            ),
        )
        for entry in content
    )


def tool_call_deltas(delta: dict[str, Any]) -> list[ToolCallDelta]:
    """Streamed `tool_calls` pieces; arguments may come as an object (TGI before 3.0)."""
    calls = []
    for position, call in enumerate(delta.get("tool_calls") or ()):
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(
            ToolCallDelta(
                index=int(call.get("index", position)),
                id=call.get("id") or None,
                name=function.get("name") or None,
                arguments=arguments,
            )
        )
    return calls


class ChunkDecoder:
    """OpenAI-format stream chunks (`/v1/chat/completions`' deltas, `/v1/completions`' text) to
    deltas, a batch at a time. `usage` is set by the chunk that carries it; `done` by `[DONE]` (a
    server that sends no usage); `finish` and `text_chunks` (chunks that carried text: such servers
    stream one token per chunk) count the answer without usage. `stop`: sequences to cut the text
    at, for a server that returns them (TGI); () passes the text as it comes."""

    def __init__(self, stop: tuple[str, ...], server: str) -> None:
        self.trimmer = StopTrimmer(stop)
        self.server = server
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.finish: str | None = None
        self.text_chunks = 0

    def decode(self, batch: list[bytes]) -> list[BackendEvent]:
        events: list[BackendEvent] = []
        run = TextRun()
        for payload in batch:
            if payload == b"[DONE]":
                self.done = True
                break
            chunk = orjson.loads(payload)  # per token: orjson decodes in a fraction of json's time
            if "error" in chunk:
                raise BackendError("bad_response", f"{self.server} error during generation: {chunk['error']}")
            for choice in chunk.get("choices") or ():
                self._choice(choice, run, events)
            if chunk.get("usage"):
                self.usage = chunk["usage"]
                if rest := self.trimmer.flush():
                    run.add(rest)
                break
        run.flush_into(events)
        return events

    def reported_end(self) -> StreamEnd:
        """The end of an answer whose `usage` the server reported."""
        if self.usage is None:
            raise RuntimeError("no usage reported yet")
        return StreamEnd(
            prompt_tokens=int(self.usage["prompt_tokens"]),
            completion_tokens=int(self.usage["completion_tokens"]),
            finish_reason=finish_reason_from(self.finish),
        )

    def _choice(self, choice: dict[str, Any], run: TextRun, events: list[BackendEvent]) -> None:
        delta = choice.get("delta")
        logprobs: tuple[TokenLogprob, ...] = ()
        if delta is None:  # /v1/completions: the text itself (its logprobs are not asked for)
            content = choice.get("text") or ""
        else:
            if "tool_calls" in delta:
                run.flush_into(events)
                events.extend(tool_call_deltas(delta))
            content = delta.get("content") or ""
            logprobs = chat_logprobs(choice) if choice.get("logprobs") else ()
        self.text_chunks += 1 if content else 0
        text = self.trimmer.feed(content)
        if logprobs:  # a token with logprobs is its own delta: they are per token
            run.flush_into(events)
            events.append(TokenDelta(text, logprobs))
        elif text:
            run.add(text)
        self.finish = choice.get("finish_reason") or self.finish


async def decoded_batches(
    response: aiohttp.ClientResponse, decoder: ChunkDecoder, server: str
) -> AsyncGenerator[list[BackendEvent], None]:
    """An OpenAI-format stream's events, a batch per read, as `decoder` decodes them; when the server
    reports usage, its StreamEnd comes last, alone. A stream without usage ends at `[DONE]` or the
    body's end, and the caller ends the answer from what `decoder` saw."""
    async for batch in sse_batches(response.content, server):
        yield decoder.decode(batch)
        if decoder.usage is not None:
            end = decoder.reported_end()
            # Read `[DONE]` and the body's end: only a finished response's connection goes back
            # to the pool (else every request would open a new one).
            await response.content.read()
            yield [end]
            return
        if decoder.done:
            return


class ContextRefusal(BackendError):
    """The server refused max_new_tokens as over the `room` its context leaves after the prompt.
    `no_room`: the refusal to give instead when the prompt alone fills the context."""

    def __init__(self, message: str, *, room: int, no_room: str) -> None:
        super().__init__("rejected", message)
        self.room = room
        self.no_room = no_room


async def post_fitting_the_context(
    stack: contextlib.AsyncExitStack,
    client: aiohttp.ClientSession,
    url: str,
    *,
    body_for: Callable[[Sampling], Any],
    sampling: Sampling,
    check: Callable[[aiohttp.ClientResponse], Awaitable[None]],
) -> aiohttp.ClientResponse:
    """POST `body_for(sampling)`, `check`ed. When `check` finds the ContextRefusal of a max_new_tokens
    over the context the prompt leaves, POST once more with max_new_tokens lowered to that room (a
    refusal like any other if it comes again)."""
    response = await stack.enter_async_context(client.post(url, json=body_for(sampling)))
    try:
        await check(response)
    except ContextRefusal as refusal:
        if refusal.room < 1:
            raise BackendError("rejected", refusal.no_room) from None
        lowered = dataclasses.replace(sampling, max_new_tokens=refusal.room)
        response = await stack.enter_async_context(client.post(url, json=body_for(lowered)))
        await check(response)
    return response


@contextlib.asynccontextmanager
async def translate_errors(server: str) -> AsyncIterator[None]:
    """aiohttp failures as BackendErrors; messages name the failure and `server`, never the URL."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError:  # nothing reached the model: safe to send again
        raise BackendError(
            "unavailable", f"cannot connect to {server} within {CONNECT_TIMEOUT_S:g} s"
        ) from None
    except TimeoutError:  # aiohttp's read timeouts are TimeoutErrors
        raise BackendError("timeout", f"{server} did not answer in time") from None
    except aiohttp.ClientConnectorError:
        raise BackendError("unavailable", f"cannot connect to {server}") from None
    except aiohttp.ClientError:  # disconnected, reset, truncated chunked body
        raise BackendError("bad_response", f"{server} closed the connection mid-response") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError("bad_response", f"{server} sent a malformed event: {exc}") from None
