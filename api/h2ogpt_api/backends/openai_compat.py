"""vLLM and any OpenAI-compatible server, over aiohttp (h2ogpt_api.backends.sse says why).

Chat messages go to `/v1/chat/completions` (the server applies the model's template); a
prompt rendered with `--prompt_type` goes to `/v1/completions`. A refusal of `max_tokens` as
over the context (vLLM's or TGI's words) is sent again once with `max_tokens` lowered to the
room the server reports. Usage comes from the server (`stream_options.include_usage`); a server
that ignores that option (llama-cpp-python's) ends its stream with a finish reason and no usage:
the tokens are then counted as the chunks that carried text (such servers stream one token per
chunk) and the prompt as 0, unknown. The key is read from `OPENAI_API_KEY` ('EMPTY' when
unset, which vLLM accepts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from h2ogpt_api.backends.base import (
    BackendError,
    BackendEvent,
    BackendRequest,
    OutputOptions,
    Sampling,
    StreamEnd,
    finish_reason_from,
    first_unsupported,
)
from h2ogpt_api.backends.sse import (
    ChunkDecoder,
    ContextRefusal,
    decoded_batches,
    post_fitting_the_context,
    session,
    translate_errors,
)

SERVER = "the inference server"  # how errors name the server

# What the upstream's routes take (OpenAI's own parameters, passed through as sent): the chat
# route everything; /v1/completions (used with --prompt_type) has no tools, and its logprobs are
# another shape that this proxy does not translate.
CHAT_OPTIONS = frozenset({"tools", "response_format", "logprobs", "frequency_penalty", "presence_penalty"})
COMPLETION_OPTIONS = frozenset({"response_format", "frequency_penalty", "presence_penalty"})


def option_args(options: OutputOptions, *, chat: bool) -> dict[str, Any]:
    """The request fields for `options`, named as OpenAI names them (only those set)."""
    args: dict[str, Any] = {}
    if options.tools:
        args["tools"] = list(options.tools)
        if options.tool_choice is not None:
            args["tool_choice"] = options.tool_choice
    if options.response_format is not None:
        args["response_format"] = options.response_format
    if options.logprobs and chat:
        args["logprobs"] = True
        if options.top_logprobs:
            args["top_logprobs"] = options.top_logprobs
    if options.frequency_penalty:
        args["frequency_penalty"] = options.frequency_penalty
    if options.presence_penalty:
        args["presence_penalty"] = options.presence_penalty
    return args


def vllm_base_url(server: str) -> str:
    """`vllm:host:port` (h2oGPT's form) or `vllm:http://host:port/v1` -> the `/v1` base URL."""
    rest = server.removeprefix("vllm:")
    if rest.startswith(("http://", "https://")):
        return rest.rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--inference_server {server!r}: expected vllm:host:port")
    return f"http://{host}:{port}/v1"


# How servers say "prompt + max_tokens is over the context", with (limit, prompt tokens): vLLM's
# older and newer wording, and TGI's OpenAI route.
_CONTEXT_REFUSALS = (
    re.compile(r"maximum context length is (\d+) tokens\. However, you requested \d+ tokens \((\d+) in the"),
    re.compile(r"maximum context length is (\d+) tokens and your request has (\d+) input tokens"),
    re.compile(r"must be <= (\d+)\. Given: (\d+) `inputs` tokens"),
)


def context_room(message: str) -> int | None:
    """The tokens a server says its context leaves for the answer, from its refusal of a too
    large max_tokens; None when the message is not such a refusal."""
    for pattern in _CONTEXT_REFUSALS:
        if match := pattern.search(message):
            return int(match.group(1)) - int(match.group(2))
    return None


class OpenAICompatBackend:
    """An OpenAI-compatible server at `base_url` (its `/v1`), over aiohttp: see
    h2ogpt_api.backends.sse for why not the `openai` client."""

    supports_chat = True
    default_system_prompt = ""  # the server's chat template decides

    def __init__(self, base_url: str, *, kind: str, model_name: str, timeout: float) -> None:
        self.kind = kind
        self.model_name = model_name
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY') or 'EMPTY'}"}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = session(self._base_url, self._timeout, self._headers)
        return self._session

    @property
    def supports_min_new_tokens(self) -> bool:
        return self.kind == "vllm"  # vLLM's `min_tokens`; OpenAI's API has no such parameter

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def concurrency_limit(self) -> int | None:
        # vLLM and OpenAI-compatible servers publish no admission limit: they queue (vLLM
        # schedules by KV-cache room), so a limit of ours would only move the queue here.
        return None

    def unsupported_option(self, options: OutputOptions, *, chat: bool) -> str | None:
        return first_unsupported(options, CHAT_OPTIONS if chat else COMPLETION_OPTIONS)

    def _common(self, request: BackendRequest) -> dict[str, Any]:
        sampling = request.sampling
        args: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": sampling.max_new_tokens,
            "temperature": 0.0 if sampling.greedy else sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sampling.stop:
            args["stop"] = list(sampling.stop)
        args.update(option_args(request.options, chat=request.prompt is None))
        if self.kind == "vllm":
            # vLLM's sampling extensions; plain OpenAI servers would reject them.
            extra: dict[str, Any] = {"repetition_penalty": sampling.repetition_penalty}
            if sampling.top_k > 0 and not sampling.greedy:
                extra["top_k"] = sampling.top_k
            if sampling.min_new_tokens:
                extra["min_tokens"] = sampling.min_new_tokens
            args.update(extra)
        return args

    def _body(self, request: BackendRequest, sampling: Sampling) -> dict[str, Any]:
        body = self._common(dataclasses.replace(request, sampling=sampling))
        if request.prompt is None:
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        else:
            body["prompt"] = request.prompt
        return body

    async def _post(
        self, stack: contextlib.AsyncExitStack, request: BackendRequest
    ) -> aiohttp.ClientResponse:
        url = f"{self._base_url}/{'chat/completions' if request.prompt is None else 'completions'}"
        return await post_fitting_the_context(
            stack,
            self._client(),
            url,
            body_for=lambda sampling: self._body(request, sampling),
            sampling=request.sampling,
            check=_raise_for_status,
        )

    async def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        # The server applies the stop sequences and leaves them out of the text: nothing to trim.
        decoder = ChunkDecoder((), SERVER)
        async with translate_errors(SERVER), contextlib.AsyncExitStack() as stack:
            response = await self._post(stack, request)
            async with contextlib.aclosing(decoded_batches(response, decoder, SERVER)) as batches:
                async for decoded in batches:
                    for event in decoded:
                        yield event
        if decoder.usage is not None:  # its StreamEnd was the last event
            return
        if decoder.finish is not None:  # a complete answer from a server that reports no usage when streaming
            yield StreamEnd(
                prompt_tokens=0,
                completion_tokens=decoder.text_chunks,
                finish_reason=finish_reason_from(decoder.finish),
            )
            return
        raise BackendError(
            "bad_response", f"the {self.kind} server's stream ended without a finish reason or usage"
        )


def _error_message(body: str) -> str:
    """The message of an error body: OpenAI's `{"error": {"message"}}`, vLLM's older
    `{"message"}`, TGI's `{"error": "..."}`; else the text itself."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(parsed.get("message"), str):
            return str(parsed["message"])
    return body


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    status = response.status
    if status == 200:
        return
    body = (await response.read()).decode(errors="replace")[:2000]
    message = _error_message(body)
    if status in (400, 422) and (room := context_room(f"{message} {body}")) is not None:
        raise ContextRefusal(
            f"{SERVER} refused max_tokens as over the context: {message[:500]}",
            room=room,
            no_room=f"the prompt leaves no room in the model's context: {message[:500]}",
        )
    if status in (429, 503):
        raise BackendError("unavailable", f"{SERVER} is overloaded ({status})")
    if 400 <= status < 500:
        raise BackendError("rejected", f"{SERVER} refused the request ({status}): {message[:500]}")
    raise BackendError("bad_response", f"{SERVER} failed ({status})")
