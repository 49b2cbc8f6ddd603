"""A FAKE Text Generation Inference server: TGI's HTTP protocol, no model.

This is the one fake the project allows (no GPU TGI runs here). It speaks TGI's routes as
the real server does: `POST /generate`, `POST /generate_stream` (SSE events with `token`,
then `generated_text` + `details`), `POST /` (the `text-generation` client's route),
`POST /tokenize`, `POST /v1/chat/completions` and `POST /v1/completions` (OpenAI-style, with
`usage`), `GET /info`, `GET /health`, `GET /metrics`.

Its "model" echoes the words of the prompt, one word per token, so answers are
deterministic and show what the prompt contained (grounding tests read them). Token counts
are word counts, consistently across `/tokenize`, `details` and `usage`.

Guidance, modelled on TGI's (docs: "Guidance", using_guidance.md): a JSON grammar
(`parameters.grammar` on /generate*, `response_format` on the chat route, both
`{"type": "json", "value": <schema>}`; TGI answers 422 to other grammar types it does not know)
constrains the answer to JSON matching the schema: the fake writes the schema's instance, its
strings filled with the prompt's words. Tools on the chat route: `tool_choice` `none` answers
text; a named function, or `required`, calls that (or the first) tool; `auto` calls the first
tool whose name appears in the prompt, else answers text (TGI's "no tool" choice). A call comes
back as OpenAI `tool_calls` with JSON `arguments` from the tool's parameter schema, streamed as
a first delta with id and name, then argument pieces. Logprobs: every token has logprob -0.5;
`logprobs`/`top_logprobs` on the chat route and `top_n_tokens` on /generate_stream add them
(the alternatives are `<alt0>`, `<alt1>`, ... at -1.5, -2.5, ...). TGI validates penalties to
[-2, 2] (422 otherwise); they do not change an echo.

Failure modes, set for every request (constructor / CLI) or per request by a marker in the
prompt text: `FAKE:500` answers HTTP 500, `FAKE:HANG` never answers, `FAKE:DROP` drops the
connection after a few tokens, `FAKE:DELAY=<seconds>` sets that request's per-token delay.
`GET /fake/stats` counts started, completed and client-disconnected generations.

`GET /metrics` serves a few of TGI's documented metric names (docs: "Metrics" reference) with
what the fake can honestly say: `tgi_request_count` (generations started), `tgi_batch_current_size`
(generations in progress: the fake runs each at once, unbatched), `tgi_queue_size` (always 0: it
queues nothing) and `tgi_request_mean_time_per_token_duration` (a histogram in seconds, one
observation per finished generation: its duration over its tokens), so the dashboard's TGI panels
have data in the tests. The values describe the fake, never a real TGI's performance.

Like TGI, it refuses (422, TGI's message) a request whose prompt tokens plus `max_new_tokens`
exceed `max_total_tokens`, and (429, TGI's "Model is overloaded") a generation beyond
`max_concurrent_requests` running at once, which `/info` reports (TGI's default 128; the
stats count the most that ran at once). Older or differently built servers are imitated with
`chat_route=False` (no `/v1/chat/completions`: 404, as TGI before 1.4) and `stream_usage=False`
(chat streams end without a `usage` chunk, as servers that ignore `stream_options` do).

A per-replica prefix-cache MODEL (`PrefixCacheModel`, off unless given) stands for the KV cache a
real server keeps: time to first token grows with the prompt tokens this replica has not seen as
a prefix before. It is a model of the effect routing has, not of TGI's cache internals.

Standalone, for benchmarks: `python -m tests.support.tgi_fake --port 8080 --token-delay 0.01`
(`--ports 8081,8082,...` serves one fake per port from one process, each with its own cache).
It is a raw ASGI app (no framework) so a token costs one small `send`, even at 256 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import uvicorn
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

Failure = Literal["none", "500", "hang", "drop"]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_DELAY_MARKER = re.compile(r"FAKE:DELAY=([0-9.]+)")
DROP_AFTER_TOKENS = 3
TGI_DEFAULT_MAX_CONCURRENT_REQUESTS = 128  # TGI's --max-concurrent-requests default
FAKE_MODEL_ID = "fake/tgi-echo"


@dataclass
class FakeStats:
    started: int = 0
    completed: int = 0
    disconnected: int = 0
    running: int = 0  # generations in progress now
    peak_running: int = 0  # the most that ran at once
    overloaded: int = 0  # refused with 429, over max_concurrent_requests
    requests: dict[str, int] = field(default_factory=dict)


class PrefixCacheModel:
    """A MODEL of one replica's prefix (KV) cache, for routing benchmarks.

    The prompt's tokens (the fake's tokens are words) are cut into blocks of `block_tokens`; a
    block is cached when the whole prompt up to its end was seen before (a chain of hashes, as
    vLLM's automatic prefix caching and TGI's prefix cache work). Cached blocks live in an LRU of
    `capacity_tokens`. A prompt's prefill is `base_s` plus `prefill_s_per_token` of work for each
    token after its longest cached prefix. Prefills on one replica share its compute (processor
    sharing: n prefills at once each go at 1/n of the speed, as a batching server's do), so a
    replica with more uncached work is slower for every request on it.
    """

    def __init__(
        self,
        *,
        capacity_tokens: int = 16384,
        block_tokens: int = 16,
        prefill_s_per_token: float = 0.0001,
        base_s: float = 0.002,
    ) -> None:
        self.capacity_blocks = max(1, capacity_tokens // block_tokens)
        self.block_tokens = block_tokens
        self.prefill_s_per_token = prefill_s_per_token
        self.base_s = base_s
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._compute = SharedCompute()
        self.prompt_tokens = 0
        self.cached_tokens = 0

    def uncached_tokens(self, tokens: list[str]) -> int:
        """Tokens of `tokens` after its longest cached prefix; the whole prompt is cached after."""
        chain = 0
        cached_blocks = 0
        still_cached = True
        full_blocks = len(tokens) // self.block_tokens
        for index in range(full_blocks):
            block = tokens[index * self.block_tokens : (index + 1) * self.block_tokens]
            chain = hash((chain, *block))
            if still_cached and chain in self._blocks:
                cached_blocks += 1
                self._blocks.move_to_end(chain)
                continue
            still_cached = False
            self._blocks[chain] = None
            if len(self._blocks) > self.capacity_blocks:
                self._blocks.popitem(last=False)
        cached = cached_blocks * self.block_tokens
        self.prompt_tokens += len(tokens)
        self.cached_tokens += cached
        return len(tokens) - cached

    async def prefill(self, tokens: list[str]) -> None:
        """Wait as long as this replica's prefill of `tokens` would take beside the others."""
        uncached = self.uncached_tokens(tokens)
        await self._compute.run(self.base_s + uncached * self.prefill_s_per_token)


class SharedCompute:
    """Processor sharing: every job in progress advances at 1/n of full speed (n = jobs now)."""

    def __init__(self) -> None:
        self._remaining: dict[asyncio.Future[None], float] = {}  # job -> seconds of work left
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._advance(loop.time())
        job: asyncio.Future[None] = loop.create_future()
        self._remaining[job] = seconds
        self._schedule(loop)
        try:
            await job
        finally:
            if self._remaining.pop(job, None) is not None:  # cancelled: the others speed up
                self._advance(loop.time())
                self._schedule(loop)

    def _advance(self, now: float) -> None:
        if self._remaining:
            share = (now - self._last) / len(self._remaining)
            for job in self._remaining:
                self._remaining[job] -= share
        self._last = now

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._remaining:
            soonest = min(self._remaining.values())
            self._timer = loop.call_later(max(0.0, soonest) * len(self._remaining), self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._advance(loop.time())
        for job, left in list(self._remaining.items()):
            if left <= 1e-6:
                del self._remaining[job]
                if not job.done():
                    job.set_result(None)
        self._schedule(loop)


FAKE_LOGPROB = -0.5


def json_instance(schema: dict[str, Any], words: list[str]) -> Any:
    """A value matching `schema` (the subset of JSON schema a grammar usually gets), strings
    taken from `words` in turn: what a grammar-constrained echo model would write."""
    pool = iter(words or ["empty"])

    def word() -> str:
        return next(pool, "word")

    def build(node: dict[str, Any]) -> Any:  # noqa: PLR0911 (one answer per JSON type)
        if "enum" in node:
            return node["enum"][0]
        if "const" in node:
            return node["const"]
        for key in ("anyOf", "oneOf", "allOf"):
            if node.get(key):
                return build(node[key][0])
        kind = node.get("type", "object")
        if isinstance(kind, list):
            kind = kind[0]
        if kind == "object":
            properties = node.get("properties") or {}
            if not properties:
                return {"echo": " ".join(words)}
            return {name: build(sub) for name, sub in properties.items()}
        if kind == "array":
            return [build(node.get("items") or {"type": "string"})]
        if kind == "string":
            return word()
        if kind == "integer":
            return len(words)
        if kind == "number":
            return float(len(words))
        if kind == "boolean":
            return True
        return None

    return build(schema)


def json_pieces(value: Any) -> list[str]:
    """A JSON text cut into token-like pieces (at most 8 characters each)."""
    text = json.dumps(value)
    return [text[start : start + 8] for start in range(0, len(text), 8)]


class GrammarError(ValueError):
    """A grammar TGI would refuse with 422."""


def grammar_pieces(grammar: Any, words: list[str]) -> list[str] | None:
    """The answer's pieces under a TGI grammar; None without one."""
    if grammar is None:
        return None
    if not isinstance(grammar, dict) or grammar.get("type") not in ("json", "json_object", "regex"):
        raise GrammarError(f"unknown grammar type: {grammar!r}")
    if grammar["type"] == "regex":
        raise GrammarError("the fake models JSON grammars only (regex is not modelled)")
    value = grammar.get("value")
    return json_pieces(json_instance(value if isinstance(value, dict) else {"type": "object"}, words))


def chosen_tool(request: dict[str, Any], prompt: str) -> dict[str, Any] | None:
    """The tool TGI's tool grammar would make the model call; None = answer with text."""
    tools = [tool.get("function") or {} for tool in request.get("tools") or []]
    choice = request.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((tool for tool in tools if tool.get("name") == name), None)
    named = next((tool for tool in tools if tool.get("name") and tool["name"] in prompt), None)
    if choice == "required":
        return named or tools[0]
    return named  # auto: "no tool" unless the prompt asks for one


def check_penalties(values: dict[str, Any]) -> None:
    for name in ("frequency_penalty", "presence_penalty"):
        value = values.get(name)
        if value is not None and not -2.0 <= float(value) <= 2.0:
            raise GrammarError(f"`{name}` must be >= -2.0 and <= 2.0")


def fake_logprobs(token: str, top: int) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": FAKE_LOGPROB,
        "top_logprobs": [
            {"token": f"<alt{rank}>", "logprob": FAKE_LOGPROB - 1 - rank} for rank in range(top)
        ],
    }


@dataclass
class FakePlan:
    """What one generation will do."""

    words: list[str]
    max_new_tokens: int
    stop: list[str]
    delay: float
    failure: Failure
    seed: int
    # A grammar's answer, cut into tokens: written exactly, up to max_new_tokens pieces.
    pieces: list[str] | None = None
    # The whole prompt's tokens (words), template included, for the prefix-cache model.
    prompt_tokens: list[str] = field(default_factory=list)
    top_n: int = 0  # alternatives listed per token (top_n_tokens / top_logprobs)

    def tokens(self, repeat: bool) -> Iterator[tuple[str, str | None]]:
        """(token text, finish reason or None) for each token; the last carries the reason."""
        if self.pieces is not None:
            count = min(self.max_new_tokens, len(self.pieces))
            for index in range(count):
                last = index == count - 1
                yield (
                    self.pieces[index],
                    (("length" if count < len(self.pieces) else "eos_token") if last else None),
                )
            return
        words = self.words or ["empty"]
        text = ""
        count = self.max_new_tokens if repeat else min(self.max_new_tokens, len(words))
        for index in range(count):
            piece = words[index % len(words)] if index == 0 else " " + words[index % len(words)]
            text += piece
            if any(stop in text[-(len(stop) + len(piece)) :] for stop in self.stop):
                yield piece, "stop_sequence"
                return
            last = index == count - 1
            reason = None
            if last:
                reason = "length" if count == self.max_new_tokens else "eos_token"
            yield piece, reason


class TgiFake:
    """The fake server's ASGI app and settings."""

    def __init__(
        self,
        *,
        token_delay: float = 0.0,
        failure: Failure = "none",
        repeat: bool = False,
        model_id: str = FAKE_MODEL_ID,
        max_total_tokens: int = 4096,
        chat_route: bool = True,
        stream_usage: bool = True,
        prefix_cache: PrefixCacheModel | None = None,
        max_concurrent_requests: int = TGI_DEFAULT_MAX_CONCURRENT_REQUESTS,
    ) -> None:
        self.prefix_cache = prefix_cache
        self.token_delay = token_delay
        self.failure: Failure = failure
        self.repeat = repeat
        self.model_id = model_id
        self.max_total_tokens = max_total_tokens
        self.chat_route = chat_route
        self.stream_usage = stream_usage
        self.max_concurrent_requests = max_concurrent_requests
        self.stats = FakeStats()
        self.registry = CollectorRegistry()
        # Read from the admission count at each scrape: one count of what runs, not two kept in step.
        Gauge("tgi_batch_current_size", "Generations in progress", registry=self.registry).set_function(
            lambda: self.stats.running
        )
        Gauge("tgi_queue_size", "Requests queued (the fake queues none)", registry=self.registry).set(0)
        self._time_per_token = Histogram(
            "tgi_request_mean_time_per_token_duration", "Duration over tokens of each finished generation",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0), registry=self.registry,
        )  # fmt: skip

    def _generation_started(self) -> Callable[[int], None]:
        """Counts one generation started; call the result with its token count once it finished."""
        self.stats.started += 1
        started = time.monotonic()

        def finished(tokens: int) -> None:
            self.stats.completed += 1
            self._time_per_token.observe((time.monotonic() - started) / max(tokens, 1))

        return finished

    # -- planning ----------------------------------------------------------------------------

    def plan(self, prompt: str, max_new_tokens: int, stop: list[str] | None, seed: int | None) -> FakePlan:
        failure: Failure = self.failure
        if "FAKE:500" in prompt:
            failure = "500"
        elif "FAKE:HANG" in prompt:
            failure = "hang"
        elif "FAKE:DROP" in prompt:
            failure = "drop"
        delay_match = _DELAY_MARKER.search(prompt)
        delay = float(delay_match.group(1)) if delay_match else self.token_delay
        words = prompt.split()
        return FakePlan(
            prompt_tokens=words,
            words=words,
            max_new_tokens=max(1, max_new_tokens),
            stop=list(stop or []),
            delay=delay,
            failure=failure,
            seed=seed or 0,
        )

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        method, path = scope["method"], scope["path"]
        self.stats.requests[path] = self.stats.requests.get(path, 0) + 1
        if method == "GET":
            await self._get(path, send)
            return
        body = await _read_body(receive)
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            await _json(send, 400, {"error": "invalid JSON", "error_type": "validation"})
            return
        handler = {
            "/generate": self._generate,
            "/generate_stream": self._generate_stream,
            "/": self._root,
            "/tokenize": self._tokenize,
            "/v1/chat/completions": self._chat if self.chat_route else None,
            "/v1/completions": self._completions,
        }.get(path)
        if handler is None:
            await _json(send, 404, {"error": f"no route {path}"})
            return
        if path != "/tokenize" and (refusal := self._too_long(path, request)):
            await _json(send, 422, {"error": refusal, "error_type": "validation"})
            return
        if path == "/tokenize":
            await handler(request, receive, send)
        else:
            await self._generation(handler, request, receive, send)

    async def _generation(
        self,
        handler: Callable[[dict[str, Any], Receive, Send], Awaitable[None]],
        request: dict[str, Any],
        receive: Receive,
        send: Send,
    ) -> None:
        """Run a generating route within max_concurrent_requests, counting what runs at once."""
        if self.stats.running >= self.max_concurrent_requests:
            self.stats.overloaded += 1  # TGI's answer past --max-concurrent-requests
            await _json(send, 429, {"error": "Model is overloaded", "error_type": "overloaded"})
            return
        self.stats.running += 1
        self.stats.peak_running = max(self.stats.peak_running, self.stats.running)
        ended = False

        async def send_counted(message: dict[str, Any]) -> None:
            # A generation ends with its answer's last bytes, before the client can see them
            # (as TGI frees its permit when generation ends, not when the socket drains).
            nonlocal ended
            if not ended and message["type"] == "http.response.body" and not message.get("more_body"):
                ended = True
                self.stats.running -= 1
            await send(message)

        try:
            await handler(request, receive, send_counted)
        except GrammarError as exc:  # TGI's validation answer, before any generation
            await _json(send_counted, 422, {"error": str(exc), "error_type": "validation"})
        finally:
            if not ended:
                self.stats.running -= 1

    def _too_long(self, path: str, request: dict[str, Any]) -> str | None:
        """TGI's validation of prompt + max_new_tokens against max_total_tokens, in its words."""
        if path == "/v1/chat/completions":
            prompt, max_new = self._chat_prompt(request), request.get("max_tokens")
        elif path == "/v1/completions":
            prompt, max_new = str(request.get("prompt") or ""), request.get("max_tokens")
        else:
            parameters = request.get("parameters") or {}
            prompt, max_new = str(request.get("inputs", "")), parameters.get("max_new_tokens")
        inputs = len(prompt.split())
        max_new = int(max_new or 20)
        if inputs + max_new > self.max_total_tokens:
            return (
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {inputs} `inputs` tokens and {max_new} `max_new_tokens`"
            )
        return None

    async def _get(self, path: str, send: Send) -> None:
        if path == "/health":
            await _json(send, 200, {})
        elif path == "/info":
            await _json(
                send,
                200,
                {
                    "model_id": self.model_id,
                    "model_dtype": "fake",
                    "max_input_tokens": 4095,
                    "max_total_tokens": 4096,
                    "max_stop_sequences": 6,
                    "max_concurrent_requests": self.max_concurrent_requests,
                    "version": "fake",
                    "router": "tgi-fake",
                },
            )
        elif path == "/fake/stats":
            await _json(
                send,
                200,
                {
                    "started": self.stats.started,
                    "completed": self.stats.completed,
                    "disconnected": self.stats.disconnected,
                    "running": self.stats.running,
                    "peak_running": self.stats.peak_running,
                    "overloaded": self.stats.overloaded,
                    "requests": self.stats.requests,
                    "prefix_cache": None
                    if self.prefix_cache is None
                    else {
                        "prompt_tokens": self.prefix_cache.prompt_tokens,
                        "cached_tokens": self.prefix_cache.cached_tokens,
                    },
                },
            )
        elif path == "/metrics":
            # TGI's counter has no `_total` suffix, which prometheus_client would add: written by hand.
            started = f"# TYPE tgi_request_count counter\ntgi_request_count {self.stats.started}\n"
            text = started.encode() + generate_latest(self.registry)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4")],
                }
            )
            await send({"type": "http.response.body", "body": text})
        else:
            await _json(send, 404, {"error": f"no route {path}"})

    def _generate_plan(self, request: dict[str, Any]) -> FakePlan:
        params = request.get("parameters") or {}
        check_penalties(params)
        plan = self.plan(
            str(request.get("inputs", "")),
            int(params.get("max_new_tokens") or 20),
            params.get("stop"),
            params.get("seed"),
        )
        plan.pieces = grammar_pieces(params.get("grammar"), plan.words)
        plan.top_n = int(params.get("top_n_tokens") or 0)
        return plan

    async def _tokenize(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        tokens, offset = [], 0
        text = str(request.get("inputs", ""))
        for index, word in enumerate(text.split()):
            start = text.index(word, offset)
            offset = start + len(word)
            tokens.append({"id": index, "text": word, "start": start, "stop": offset})
        await _json(send, 200, tokens)

    async def _generate(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        result = await self._run_whole(self._generate_plan(request), receive, send)
        if result is not None:
            text, reason, count, plan = result
            await _json(
                send,
                200,
                {
                    "generated_text": text,
                    "details": {"finish_reason": reason, "generated_tokens": count, "seed": plan.seed},
                },
            )

    async def _root(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        if request.get("stream"):
            await self._generate_stream(request, receive, send)
            return
        result = await self._run_whole(self._generate_plan(request), receive, send)
        if result is not None:
            text, reason, count, plan = result
            await _json(
                send,
                200,
                [
                    {
                        "generated_text": text,
                        "details": {"finish_reason": reason, "generated_tokens": count, "seed": plan.seed},
                    }
                ],
            )

    async def _generate_stream(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        plan = self._generate_plan(request)

        top_tokens = b""
        if plan.top_n:
            alternatives = [
                {
                    "id": 1000 + rank,
                    "text": f"<alt{rank}>",
                    "logprob": FAKE_LOGPROB - 1 - rank,
                    "special": False,
                }
                for rank in range(plan.top_n)
            ]
            top_tokens = b',"top_tokens":' + json.dumps(alternatives).encode()

        def event(index: int, piece: str, reason: str | None, text: str) -> bytes:
            token = f'{{"id":{index},"text":{json.dumps(piece)},"logprob":{FAKE_LOGPROB},"special":false}}'
            if reason is None:
                return b'data:{"index":%d,"token":%s%s,"generated_text":null,"details":null}\n\n' % (
                    index + 1,
                    token.encode(),
                    top_tokens,
                )
            details = {"finish_reason": reason, "generated_tokens": index + 1, "seed": plan.seed}
            return b'data:{"index":%d,"token":%s%s,"generated_text":%s,"details":%s}\n\n' % (
                index + 1,
                token.encode(),
                top_tokens,
                json.dumps(text).encode(),
                json.dumps(details).encode(),
            )

        await self._stream(plan, receive, send, event, done=None)

    def _chat_prompt(self, request: dict[str, Any]) -> str:
        lines = []
        for message in request.get("messages") or []:
            content = message.get("content") or ""
            if isinstance(content, list):
                content = " ".join(str(part.get("text", "")) for part in content)
            lines.append(f"{message.get('role', 'user')}: {content}")
        return "\n".join(lines)

    async def _chat(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        await self._openai_style(request, self._chat_prompt(request), "chat", receive, send)

    async def _completions(self, request: dict[str, Any], receive: Receive, send: Send) -> None:
        prompt = request.get("prompt") or ""
        await self._openai_style(
            request, prompt if isinstance(prompt, str) else " ".join(prompt), "text", receive, send
        )

    async def _openai_style(
        self,
        request: dict[str, Any],
        prompt: str,
        kind: Literal["chat", "text"],
        receive: Receive,
        send: Send,
    ) -> None:
        stop = request.get("stop")
        check_penalties(request)
        plan = self.plan(
            prompt,
            int(request.get("max_tokens") or 20),
            [stop] if isinstance(stop, str) else stop,
            request.get("seed"),
        )
        tool = chosen_tool(request, prompt) if kind == "chat" else None
        if tool is not None:
            # TGI constrains the answer to the tool's call: its arguments are the generated tokens.
            plan.pieces = json_pieces(json_instance(tool.get("parameters") or {}, plan.words))
        else:
            plan.pieces = grammar_pieces(request.get("response_format"), plan.words)
        logprobs = kind == "chat" and bool(request.get("logprobs"))
        plan.top_n = int(request.get("top_logprobs") or 0) if logprobs else 0
        prompt_tokens = len(prompt.split())
        created = int(time.time())
        ident = f"fake-{created}-{self.stats.started}"
        obj = "chat.completion" if kind == "chat" else "text_completion"
        call_id = f"call-{ident}"

        def finish(reason: str) -> str:
            return "length" if reason == "length" else "stop"

        def choice_logprobs(tokens: list[str]) -> Any:
            return {"content": [fake_logprobs(token, plan.top_n) for token in tokens]} if logprobs else None

        if not request.get("stream"):
            result = await self._run_whole(plan, receive, send)
            if result is None:
                return
            text, reason, count, _ = result
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish(reason), "logprobs": None}
            if kind == "chat":
                if tool is not None:
                    call = {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": tool["name"], "arguments": text},
                    }
                    choice["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
                else:
                    choice["message"] = {"role": "assistant", "content": text}
                    tokens = [piece for piece, _ in plan.tokens(self.repeat)][:count]
                    choice["logprobs"] = choice_logprobs(tokens)
            else:
                choice["text"] = text
            await _json(
                send,
                200,
                {
                    "id": ident,
                    "object": obj,
                    "created": created,
                    "model": self.model_id,
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": count,
                        "total_tokens": prompt_tokens + count,
                    },
                },
            )
            return
        include_usage = self.stream_usage and bool((request.get("stream_options") or {}).get("include_usage"))
        head = json.dumps(
            {
                "id": ident,
                "object": obj + ".chunk" if kind == "chat" else obj,
                "created": created,
                "model": self.model_id,
            }
        )[:-1].encode()

        def event(index: int, piece: str, reason: str | None, text: str) -> bytes:
            reason_json = json.dumps(finish(reason) if reason else None).encode()
            if tool is not None:
                call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
                if index == 0:  # the first delta names the call, as OpenAI servers do
                    call.update(id=call_id, type="function")
                    call["function"]["name"] = tool["name"]
                delta = {"role": "assistant", "content": None, "tool_calls": [call]}
                choice = b'{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}' % (
                    json.dumps(delta).encode(),
                    reason_json,
                )
            elif kind == "chat":
                choice = (
                    b'{"index":0,"delta":{"role":"assistant","content":%s},"logprobs":%s,"finish_reason":%s}'
                    % (
                        json.dumps(piece).encode(),
                        json.dumps(choice_logprobs([piece])).encode(),
                        reason_json,
                    )
                )
            else:
                choice = b'{"index":0,"text":%s,"logprobs":null,"finish_reason":%s}' % (
                    json.dumps(piece).encode(),
                    reason_json,
                )
            out = b"data: " + head + b',"choices":[' + choice + b"]}\n\n"
            if reason is not None and include_usage:
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": index + 1,
                    "total_tokens": prompt_tokens + index + 1,
                }
                out += b"data: " + head + b',"choices":[],"usage":' + json.dumps(usage).encode() + b"}\n\n"
            return out

        await self._stream(plan, receive, send, event, done=b"data: [DONE]\n\n")

    # -- the generation loops ----------------------------------------------------------------

    async def _fail_before_answer(self, plan: FakePlan, send: Send, disconnected: asyncio.Event) -> bool:
        """Carry out a 500 or a hang; True when the request is finished with."""
        if plan.failure == "500":
            await _json(send, 500, {"error": "fake failure requested", "error_type": "generation"})
            return True
        if plan.failure == "hang":
            await disconnected.wait()
            self.stats.disconnected += 1
            return True
        return False

    async def _run_whole(
        self, plan: FakePlan, receive: Receive, send: Send
    ) -> tuple[str, str, int, FakePlan] | None:
        finished = self._generation_started()
        async with _watch_disconnect(receive) as disconnected:
            if await self._fail_before_answer(plan, send, disconnected):
                return None
            if self.prefix_cache is not None:
                await self.prefix_cache.prefill(plan.prompt_tokens)
            text, reason, count = "", "length", 0
            for piece, finish in plan.tokens(self.repeat):
                if plan.delay:
                    await asyncio.sleep(plan.delay)
                if disconnected.is_set():
                    self.stats.disconnected += 1
                    return None
                text += piece
                count += 1
                reason = finish or reason
            finished(count)
            return text, reason, count, plan

    async def _stream(
        self,
        plan: FakePlan,
        receive: Receive,
        send: Send,
        event: Callable[[int, str, str | None, str], bytes],
        done: bytes | None,
    ) -> None:
        finished = self._generation_started()
        async with _watch_disconnect(receive) as disconnected:
            if await self._fail_before_answer(plan, send, disconnected):
                return
            if self.prefix_cache is not None:
                await self.prefix_cache.prefill(plan.prompt_tokens)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )
            text, count = "", 0
            for index, (piece, finish) in enumerate(plan.tokens(self.repeat)):
                if plan.delay:
                    await asyncio.sleep(plan.delay)
                if disconnected.is_set():
                    self.stats.disconnected += 1
                    return
                if plan.failure == "drop" and index == DROP_AFTER_TOKENS:
                    raise ConnectionAbortedError("fake drop requested: closing the connection mid-stream")
                text += piece
                count += 1
                await send(
                    {
                        "type": "http.response.body",
                        "body": event(index, piece, finish, text),
                        "more_body": True,
                    }
                )
            await send({"type": "http.response.body", "body": done or b"", "more_body": False})
            finished(count)


@contextlib.asynccontextmanager
async def _watch_disconnect(receive: Receive) -> Any:
    """An event set when the client goes away (uvicorn ignores sends after that, so we must listen)."""
    disconnected = asyncio.Event()

    async def listen() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    watcher = asyncio.create_task(listen())
    try:
        yield disconnected
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def _json(send: Send, status: int, payload: Any) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningFake:
    """The fake served by uvicorn on a loopback port (or another address of this machine: `host`), in a
    background thread."""

    def __init__(self, fake: TgiFake, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.fake = fake
        self.port = port or free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            fake, host=host, port=self.port, log_level="critical", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="tgi-fake", daemon=True)

    def start(self) -> RunningFake:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the TGI fake did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def started_again(self) -> RunningFake:
        """The same fake (its stats and failures) served again at this one's address, after `stop`:
        a replica coming back."""
        return RunningFake(self.fake, port=self.port, host=self.host).start()


@pytest.fixture(scope="session")
def tgi_fake() -> Iterator[RunningFake]:
    """A TGI fake for the whole session (no delay, no failures unless a prompt asks for one)."""
    running = RunningFake(TgiFake()).start()
    yield running
    running.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="A FAKE TGI server (TGI's protocol, echoes the prompt).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--ports", default="", help="comma-separated ports: one fake (one replica) on each, from one process"
    )
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--fail", choices=["none", "500", "hang", "drop"], default="none")
    parser.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=TGI_DEFAULT_MAX_CONCURRENT_REQUESTS,
        help="generations at once (reported in /info; more get 429, as TGI)",
    )
    parser.add_argument(
        "--repeat",
        action="store_true",
        help="cycle the prompt's words so every answer runs to max_new_tokens",
    )
    parser.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=0,
        help="model a prefix cache of this many tokens per replica (0 = none): see PrefixCacheModel",
    )
    parser.add_argument("--prefill-s-per-token", type=float, default=0.0001, help="the model's prefill cost")
    parser.add_argument("--prefix-block-tokens", type=int, default=16, help="the model's cache block size")
    args = parser.parse_args()

    def one_fake() -> TgiFake:
        cache = None
        if args.prefix_cache_tokens:
            cache = PrefixCacheModel(
                capacity_tokens=args.prefix_cache_tokens,
                block_tokens=args.prefix_block_tokens,
                prefill_s_per_token=args.prefill_s_per_token,
            )
        return TgiFake(
            token_delay=args.token_delay,
            failure=args.fail,
            repeat=args.repeat,
            prefix_cache=cache,
            max_concurrent_requests=args.max_concurrent_requests,
        )

    ports = [int(port) for port in args.ports.split(",") if port] or [args.port]
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                one_fake(), host=args.host, port=port, log_level="warning", access_log=False, lifespan="off"
            )
        )
        for port in ports
    ]

    async def serve_all() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    asyncio.run(serve_all())


if __name__ == "__main__":
    main()
