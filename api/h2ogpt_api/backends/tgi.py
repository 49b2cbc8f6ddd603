"""Text Generation Inference over aiohttp.

With a `--prompt_type` the core renders the prompt and we call `POST /generate_stream`
(SSE events with `token`, then `generated_text` + `details`); the prompt's token count comes
from TGI's `/tokenize`, asked concurrently so it adds nothing to time-to-first-token.
Without one we use TGI's `POST /v1/chat/completions`, which applies the model's chat
template and reports `usage`.

Older TGI has no chat route: the first chat call that gets a 404 there switches this backend to
`/generate_stream` with the messages rendered as ChatML (logged once). A chat stream that ends
without `usage` (servers that ignore `stream_options`) is still answered: the answer's tokens are
the chunks that carried text (TGI streams one token per chunk) and the prompt's are counted by
`/tokenize` on the ChatML rendering. A request whose prompt plus `max_new_tokens` is over TGI's
`max_total_tokens` is refused by TGI with both numbers; it is sent again once with
`max_new_tokens` lowered to the room the prompt leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson

from h2ogpt_api.backends.base import (
    BackendError,
    BackendEvent,
    BackendRequest,
    OutputOptions,
    Sampling,
    StopTrimmer,
    StreamEnd,
    TokenDelta,
    TokenLogprob,
    TopLogprob,
    finish_reason_from,
    first_unsupported,
)
from h2ogpt_api.backends.sse import (
    ChunkDecoder,
    ContextRefusal,
    TextRun,
    decoded_batches,
    post_fitting_the_context,
    session,
    sse_batches,
    translate_errors,
)
from h2ogpt_api.prompts import render, stop_sequences

log = logging.getLogger("h2ogpt_api.backends.tgi")

SERVER = "TGI"  # how errors name the server

# The start of the error for a route the server does not have.
NO_ROUTE = "TGI has no route"
# The template for chat messages when the server has no chat route.
FALLBACK_PROMPT_TYPE = "chatml"
# TGI's validation message when prompt + max_new_tokens is over max_total_tokens.
_TOTAL_TOKENS_REFUSAL = re.compile(r"must be <= (\d+)\. Given: (\d+) `inputs` tokens")


# TGI's chat route takes OpenAI's tools, logprobs and penalties, and a grammar as its
# `response_format`; /generate_stream takes a grammar, logprobs (`details`, `top_n_tokens`) and
# frequency_penalty, and has no tools. presence_penalty there becomes h2oGPT's
# repetition_penalty (TGI's generate has no presence penalty).
CHAT_OPTIONS = frozenset({"tools", "response_format", "logprobs", "frequency_penalty", "presence_penalty"})
GENERATE_OPTIONS = frozenset({"response_format", "logprobs", "frequency_penalty", "presence_penalty"})


def grammar_of(options: OutputOptions) -> dict[str, Any] | None:
    """TGI's JSON grammar (`{"type": "json", "value": <schema>}`) for a JSON response_format."""
    schema = options.json_schema
    return None if schema is None else {"type": "json", "value": schema}


def generate_parameters(sampling: Sampling, options: OutputOptions | None = None) -> dict[str, Any]:
    """TGI's `parameters`: it rejects temperature <= 0, top_p >= 1 and top_k == 0, so omit those."""
    options = options or OutputOptions()
    params: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "do_sample": not sampling.greedy,
        "details": True,
        "return_full_text": False,
        "seed": sampling.seed,
    }
    if sampling.stop:
        params["stop"] = list(sampling.stop)
    repetition_penalty = sampling.repetition_penalty
    if options.presence_penalty > 0 and repetition_penalty == 1.0:
        repetition_penalty = 1.0 + 0.5 * options.presence_penalty  # h2oGPT's mapping
    if repetition_penalty != 1.0:
        params["repetition_penalty"] = repetition_penalty
    if options.frequency_penalty:
        params["frequency_penalty"] = options.frequency_penalty
    if options.top_logprobs:
        params["top_n_tokens"] = options.top_logprobs
    if (grammar := grammar_of(options)) is not None:
        params["grammar"] = grammar
    if not sampling.greedy:
        params["temperature"] = max(sampling.temperature, 1e-2)
        if sampling.top_p < 1.0:
            params["top_p"] = min(max(sampling.top_p, 0.01), 0.999)
        if sampling.top_k > 0:
            params["top_k"] = sampling.top_k
    return params


def chat_body(request: BackendRequest, model_name: str) -> dict[str, Any]:
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model_name,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": sampling.max_new_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": sampling.seed,
        "temperature": 0.0 if sampling.greedy else sampling.temperature,
    }
    if not sampling.greedy and sampling.top_p < 1.0:
        body["top_p"] = sampling.top_p
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    options = request.options
    if options.tools:
        body["tools"] = list(options.tools)
        if options.tool_choice is not None:
            body["tool_choice"] = options.tool_choice
    if (grammar := grammar_of(options)) is not None:
        body["response_format"] = grammar
    if options.logprobs:
        body["logprobs"] = True
        if options.top_logprobs:
            body["top_logprobs"] = options.top_logprobs
    if options.frequency_penalty:
        body["frequency_penalty"] = options.frequency_penalty
    if options.presence_penalty:
        body["presence_penalty"] = options.presence_penalty
    return body


def generate_logprobs(event: dict[str, Any], options: OutputOptions) -> tuple[TokenLogprob, ...]:
    """A /generate_stream event's token logprob, and its `top_tokens` when asked for."""
    if not options.logprobs:
        return ()
    token = event.get("token") or {}
    top = tuple(TopLogprob(entry["text"], float(entry["logprob"])) for entry in event.get("top_tokens") or ())
    return (TokenLogprob(token=token.get("text", ""), logprob=float(token.get("logprob") or 0.0), top=top),)


class _GenerateDecoder:
    """`/generate_stream` events to deltas, a batch at a time; `details` is set by the final event."""

    def __init__(self, stop: tuple[str, ...], options: OutputOptions) -> None:
        self._trimmer = StopTrimmer(stop)
        self._options = options
        self.details: dict[str, Any] | None = None

    def decode(self, batch: list[bytes]) -> list[BackendEvent]:
        events: list[BackendEvent] = []
        run = TextRun()
        for payload in batch:
            event = orjson.loads(payload)  # per token: orjson decodes in a fraction of json's time
            if "error" in event:
                raise BackendError("bad_response", f"TGI error during generation: {event['error']}")
            token = event.get("token") or {}
            if token.get("text") and not token.get("special"):
                text = self._trimmer.feed(token["text"])
                logprobs = generate_logprobs(event, self._options) if text else ()
                if logprobs:  # a token with logprobs is its own delta: they are per token
                    run.flush_into(events)
                    events.append(TokenDelta(text, logprobs))
                elif text:
                    run.add(text)
            if event.get("details") is not None:
                self.details = event["details"]
                if rest := self._trimmer.flush():
                    run.add(rest)
                break
        run.flush_into(events)
        return events


class TgiBackend:
    """TGI at `base_url` (http://host:port), over aiohttp (see h2ogpt_api.backends.sse for why)."""

    kind = "tgi"
    supports_chat = True
    supports_min_new_tokens = False  # TGI's parameters have no minimum length
    default_system_prompt = ""  # TGI's chat template decides

    def __init__(self, base_url: str, *, model_name: str, timeout: float) -> None:
        self.model_name = model_name
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        # Whether the server has `/v1/chat/completions`: None until the first chat call tells.
        self.chat_route: bool | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = session(self._base_url, self._timeout)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def concurrency_limit(self) -> int | None:
        """TGI's `max_concurrent_requests` from `/info` (its --max-concurrent-requests): past it
        TGI answers 429, below it the proxy would be the queue."""
        async with (
            translate_errors(SERVER),
            self._client().get(f"{self._base_url}/info", timeout=aiohttp.ClientTimeout(total=5)) as response,
        ):
            await _raise_for_status(response)
            info = await response.json(content_type=None)
        limit = info.get("max_concurrent_requests") if isinstance(info, dict) else None
        # bool is an int: `true` is no limit
        return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    def unsupported_option(self, options: OutputOptions, *, chat: bool) -> str | None:
        # A server found without the chat route gets chat requests on /generate_stream.
        on_chat_route = chat and self.chat_route is not False
        return first_unsupported(options, CHAT_OPTIONS if on_chat_route else GENERATE_OPTIONS)

    def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        # Hand back the route's generator itself: one generator layer less per token.
        if request.prompt is None:
            if self.chat_route is False:
                return self._stream_generate(*_as_generate(request))
            return self._stream_chat(request)
        return self._stream_generate(request.prompt, request.sampling, request.options)

    async def _post(
        self, stack: contextlib.AsyncExitStack, path: str, body_for: Any, sampling: Sampling
    ) -> aiohttp.ClientResponse:
        return await post_fitting_the_context(
            stack,
            self._client(),
            f"{self._base_url}{path}",
            body_for=body_for,
            sampling=sampling,
            check=_raise_for_status,
        )

    async def _count_prompt_tokens(self, prompt: str) -> int:
        async with self._client().post(f"{self._base_url}/tokenize", json={"inputs": prompt}) as response:
            if response.status != 200:
                raise BackendError("bad_response", f"TGI /tokenize answered {response.status}")
            tokens = json.loads(await response.read())
        if not isinstance(tokens, list):
            raise BackendError("bad_response", "TGI /tokenize did not answer a list of tokens")
        return len(tokens)

    async def _stream_generate(
        self, prompt: str, sampling: Sampling, options: OutputOptions
    ) -> AsyncGenerator[BackendEvent, None]:
        prompt_tokens = asyncio.ensure_future(self._count_prompt_tokens(prompt))
        decoder = _GenerateDecoder(sampling.stop, options)
        try:
            async with translate_errors(SERVER), contextlib.AsyncExitStack() as stack:
                response = await self._post(
                    stack,
                    "/generate_stream",
                    lambda chosen: {"inputs": prompt, "parameters": generate_parameters(chosen, options)},
                    sampling,
                )
                async for batch in sse_batches(response.content, SERVER):
                    for event in decoder.decode(batch):
                        yield event
                    if decoder.details is not None:
                        async with translate_errors(SERVER):
                            counted = await prompt_tokens
                        end = StreamEnd(
                            prompt_tokens=counted,
                            completion_tokens=int(decoder.details["generated_tokens"]),
                            finish_reason=finish_reason_from(decoder.details.get("finish_reason")),
                        )
                        # Read the body to its end: only a finished response's connection goes
                        # back to the pool (else every request would open a new one to TGI).
                        await response.content.read()
                        yield end
                        return
            raise BackendError("bad_response", "TGI closed the stream before its final event")
        finally:
            if not prompt_tokens.done():
                prompt_tokens.cancel()
            with contextlib.suppress(BaseException):
                await prompt_tokens

    async def _stream_chat(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        decoder = ChunkDecoder(request.sampling.stop, SERVER)
        async with translate_errors(SERVER), contextlib.AsyncExitStack() as stack:
            try:
                response = await self._post(
                    stack,
                    "/v1/chat/completions",
                    lambda chosen: chat_body(dataclasses.replace(request, sampling=chosen), self.model_name),
                    request.sampling,
                )
            except BackendError as exc:
                if exc.kind != "rejected" or not exc.message.startswith(NO_ROUTE) or self.chat_route:
                    raise
                self.chat_route = False
                log.warning(
                    "TGI has no /v1/chat/completions (older TGI): chat goes to /generate_stream "
                    "with the messages rendered as %s; pass --prompt_type to choose the template",
                    FALLBACK_PROMPT_TYPE,
                )
                async with contextlib.aclosing(self._stream_generate(*_as_generate(request))) as events:
                    async for event in events:
                        yield event
                return
            self.chat_route = True
            async with contextlib.aclosing(decoded_batches(response, decoder, SERVER)) as batches:
                async for decoded in batches:
                    for event in decoded:
                        yield event
            if decoder.usage is not None:  # its StreamEnd was the last event
                return
        end = await self._counted_end(request, decoder.finish, decoder.text_chunks)
        if rest := decoder.trimmer.flush():
            yield TokenDelta(rest)
        yield end

    async def _counted_end(self, request: BackendRequest, finish: str | None, text_chunks: int) -> StreamEnd:
        """The end of a complete chat answer that came without usage, counted here: the answer's
        chunks, and the prompt by TGI's /tokenize on its ChatML rendering (0 when it cannot say)."""
        if finish is None:
            raise BackendError("bad_response", "TGI's chat stream ended without a finish reason or usage")
        try:
            async with translate_errors(SERVER):
                rendered = render(request.messages, FALLBACK_PROMPT_TYPE)
                prompt_tokens = await self._count_prompt_tokens(rendered)
        except BackendError as exc:
            log.warning("cannot count the prompt's tokens (%s); usage reports 0", exc.message)
            prompt_tokens = 0
        return StreamEnd(
            prompt_tokens=prompt_tokens,
            completion_tokens=text_chunks,
            finish_reason=finish_reason_from(finish),
        )


def _as_generate(request: BackendRequest) -> tuple[str, Sampling, OutputOptions]:
    """Chat messages as a ChatML prompt for `/generate_stream`, with ChatML's stop sequences."""
    template_stops = tuple(s for s in stop_sequences(FALLBACK_PROMPT_TYPE) if s not in request.sampling.stop)
    sampling = dataclasses.replace(request.sampling, stop=request.sampling.stop + template_stops)
    return render(request.messages, FALLBACK_PROMPT_TYPE), sampling, request.options


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status == 200:
        return
    body = (await response.read()).decode(errors="replace")[:500]
    try:
        detail = json.loads(body).get("error", body)
    except (ValueError, AttributeError):
        detail = body
    status = response.status
    if status in (404, 405):
        raise BackendError("rejected", f"{NO_ROUTE} {response.url.path} ({status})")
    if status == 422 and isinstance(detail, str) and (numbers := _TOTAL_TOKENS_REFUSAL.search(detail)):
        limit, input_tokens = int(numbers.group(1)), int(numbers.group(2))
        raise ContextRefusal(
            f"TGI refused the request ({status}): {detail}",
            room=limit - input_tokens,
            no_room=f"the prompt has {input_tokens} tokens and TGI's context is {limit}: "
            "shorten the messages, or give fewer documents (top_k_docs)",
        )
    if status in (429, 503):
        raise BackendError("unavailable", f"TGI is overloaded or not ready ({status}): {detail}")
    if 400 <= status < 500:
        raise BackendError("rejected", f"TGI refused the request ({status}): {detail}")
    raise BackendError("bad_response", f"TGI failed ({status}): {detail}")
