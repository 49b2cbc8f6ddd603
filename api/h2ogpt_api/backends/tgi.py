"""Text Generation Inference over aiohttp.

With a `--prompt_type` the core renders the prompt and we call `POST /generate_stream`
(SSE events with `token`, then `generated_text` + `details`); the prompt's token count comes
from TGI's `/tokenize`, asked concurrently so it adds nothing to time-to-first-token.
Without one we use TGI's `POST /v1/chat/completions`, which applies the model's chat
template and reports `usage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp

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
    ToolCallDelta,
    TopLogprob,
    finish_reason_from,
    first_unsupported,
)

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
    """TGI's streamed `tool_calls` pieces; arguments may come as an object (TGI before 3.0)."""
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


def generate_logprobs(event: dict[str, Any], options: OutputOptions) -> tuple[TokenLogprob, ...]:
    """A /generate_stream event's token logprob, and its `top_tokens` when asked for."""
    if not options.logprobs:
        return ()
    token = event.get("token") or {}
    top = tuple(TopLogprob(entry["text"], float(entry["logprob"])) for entry in event.get("top_tokens") or ())
    return (TokenLogprob(token=token.get("text", ""), logprob=float(token.get("logprob") or 0.0), top=top),)


def _sse_data(line: bytes) -> bytes | None:
    """The payload of an SSE `data:` line; None for comments, blank lines and other fields."""
    if not line.startswith(b"data:"):
        return None
    return line[5:].strip()


class TgiBackend:
    """TGI at `base_url` (http://host:port).

    aiohttp rather than httpx on this path: its C HTTP parser and line reader cost a fraction
    of httpx's pure-Python h11 + anyio stack per streamed token, which is most of what a proxy
    spends at 64+ concurrent streams (bench/openai_proxy.py measures it).
    """

    kind = "tgi"
    supports_chat = True
    default_system_prompt = ""  # TGI's chat template decides

    def __init__(self, base_url: str, *, model_name: str, timeout: float) -> None:
        self.model_name = model_name
        self._base_url = base_url.rstrip("/")
        # sock_read bounds every wait for data (the headers, then each piece of the stream), as
        # httpx's read timeout did; total=None lets a long generation run as long as it streams.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=min(timeout, 10.0), sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=self._timeout,
                # A line may be TGI's final event with the whole generated_text: allow 2 MiB lines.
                read_bufsize=1 << 20,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def unsupported_option(self, options: OutputOptions, *, chat: bool) -> str | None:
        return first_unsupported(options, CHAT_OPTIONS if chat else GENERATE_OPTIONS)

    def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        # Hand back the route's generator itself: one generator layer less per token.
        if request.prompt is None:
            return self._stream_chat(request)
        return self._stream_generate(request.prompt, request.sampling, request.options)

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
        body = {"inputs": prompt, "parameters": generate_parameters(sampling, options)}
        prompt_tokens = asyncio.ensure_future(self._count_prompt_tokens(prompt))
        trimmer = StopTrimmer(sampling.stop)
        try:
            async with (
                _translate_errors(),
                self._client().post(f"{self._base_url}/generate_stream", json=body) as response,
            ):
                await _raise_for_status(response)
                async for line in response.content:
                    payload = _sse_data(line)
                    if not payload:
                        continue
                    event = json.loads(payload)
                    if "error" in event:
                        raise BackendError("bad_response", f"TGI error during generation: {event['error']}")
                    token = event.get("token") or {}
                    if token.get("text") and not token.get("special"):
                        text = trimmer.feed(token["text"])
                        if text:
                            yield TokenDelta(text, generate_logprobs(event, options))
                    details = event.get("details")
                    if details is not None:
                        if rest := trimmer.flush():
                            yield TokenDelta(rest)
                        async with _translate_errors():
                            counted = await prompt_tokens
                        end = StreamEnd(
                            prompt_tokens=counted,
                            completion_tokens=int(details["generated_tokens"]),
                            finish_reason=finish_reason_from(details.get("finish_reason")),
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
        body = chat_body(request, self.model_name)
        finish: str | None = None
        trimmer = StopTrimmer(request.sampling.stop)
        async with (
            _translate_errors(),
            self._client().post(f"{self._base_url}/v1/chat/completions", json=body) as response,
        ):
            await _raise_for_status(response)
            async for line in response.content:
                payload = _sse_data(line)
                if not payload:
                    continue
                if payload == b"[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise BackendError("bad_response", f"TGI error during generation: {chunk['error']}")
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if "tool_calls" in delta:
                        for call in tool_call_deltas(delta):
                            yield call
                    text = trimmer.feed(delta.get("content") or "")
                    logprobs = chat_logprobs(choice) if choice.get("logprobs") else ()
                    if text or logprobs:
                        yield TokenDelta(text, logprobs)
                    finish = choice.get("finish_reason") or finish
                usage = chunk.get("usage")
                if usage:
                    if rest := trimmer.flush():
                        yield TokenDelta(rest)
                    end = StreamEnd(
                        prompt_tokens=int(usage["prompt_tokens"]),
                        completion_tokens=int(usage["completion_tokens"]),
                        finish_reason=finish_reason_from(finish),
                    )
                    # Read `[DONE]` and the body's end: only a finished response's connection
                    # goes back to the pool (else every request would open a new one to TGI).
                    await response.content.read()
                    yield end
                    return
        raise BackendError("bad_response", "TGI's chat stream ended without usage")


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status == 200:
        return
    body = (await response.read()).decode(errors="replace")[:500]
    try:
        detail = json.loads(body).get("error", body)
    except (ValueError, AttributeError):
        detail = body
    status = response.status
    if status in (429, 503):
        raise BackendError("unavailable", f"TGI is overloaded or not ready ({status}): {detail}")
    if 400 <= status < 500:
        raise BackendError("rejected", f"TGI refused the request ({status}): {detail}")
    raise BackendError("bad_response", f"TGI failed ({status}): {detail}")


@contextlib.asynccontextmanager
async def _translate_errors() -> AsyncIterator[None]:
    """aiohttp failures as BackendErrors; messages name the failure, never the URL."""
    try:
        yield
    except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutErrors
        raise BackendError("timeout", "TGI did not answer in time") from None
    except aiohttp.ClientConnectorError:
        raise BackendError("unavailable", "cannot connect to TGI") from None
    except aiohttp.ClientError:  # disconnected, reset, truncated chunked body
        raise BackendError("bad_response", "TGI closed the connection mid-response") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError("bad_response", f"TGI sent a malformed event: {exc}") from None
