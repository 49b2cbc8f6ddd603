"""vLLM and any OpenAI-compatible server, through the official `openai` async client.

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
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

# The `openai` client is built on httpx2 (not httpx). It wraps httpx2's errors, in a request and
# mid-stream alike, in APITimeoutError / APIConnectionError; the httpx2 cause tells a connect timeout.
import httpx2
import openai

from h2ogpt_api.backends.base import (
    CONNECT_TIMEOUT_S,
    BackendError,
    BackendEvent,
    BackendRequest,
    OutputOptions,
    Sampling,
    StreamEnd,
    TokenDelta,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    finish_reason_from,
    first_unsupported,
)

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


def logprobs_of(choice_logprobs: Any) -> tuple[TokenLogprob, ...]:
    """OpenAI's chat `logprobs.content` entries as our TokenLogprobs."""
    content = getattr(choice_logprobs, "content", None) or ()
    return tuple(
        TokenLogprob(
            token=entry.token,
            logprob=entry.logprob,
            top=tuple(TopLogprob(top.token, top.logprob) for top in entry.top_logprobs or ()),
        )
        for entry in content
    )


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
    supports_chat = True
    default_system_prompt = ""  # the server's chat template decides

    def __init__(self, base_url: str, *, kind: str, model_name: str, timeout: float) -> None:
        self.kind = kind
        self.model_name = model_name
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=openai.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
            max_retries=0,
        )

    @property
    def supports_min_new_tokens(self) -> bool:
        return self.kind == "vllm"  # vLLM's `min_tokens`; OpenAI's API has no such parameter

    async def aclose(self) -> None:
        await self._client.close()

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
            args["extra_body"] = extra
        return args

    async def _create(self, request: BackendRequest, sampling: Sampling) -> Any:
        args = self._common(dataclasses.replace(request, sampling=sampling))
        if request.prompt is None:
            messages: Any = [{"role": m.role, "content": m.content} for m in request.messages]
            return await self._client.chat.completions.create(messages=messages, **args)
        return await self._client.completions.create(prompt=request.prompt, **args)

    async def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        finish: str | None = None
        text_chunks = 0
        async with _translate_errors():
            try:
                chunks = await self._create(request, request.sampling)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                # max_tokens over the context the prompt leaves: once more, lowered to it.
                # The words are in the message (OpenAI-shaped errors) or only in the body (TGI's).
                room = context_room(f"{exc.message} {exc.body}")
                if room is None:
                    raise
                if room < 1:
                    raise BackendError(
                        "rejected", f"the prompt leaves no room in the model's context: {exc.message}"
                    ) from None
                lowered = dataclasses.replace(request.sampling, max_new_tokens=room)
                chunks = await self._create(request, lowered)
        async with _translate_errors(mid_response=True), chunks:
            async for chunk in chunks:
                for choice in chunk.choices:
                    if request.prompt is None:
                        text = choice.delta.content
                        logprobs = logprobs_of(choice.logprobs) if choice.logprobs else ()
                        for call in choice.delta.tool_calls or ():
                            function = call.function
                            yield ToolCallDelta(
                                index=call.index,
                                id=call.id,
                                name=function.name if function else None,
                                arguments=(function.arguments if function else None) or "",
                            )
                    else:
                        text, logprobs = choice.text, ()
                    if text or logprobs:
                        text_chunks += 1
                        yield TokenDelta(text or "", logprobs)
                    finish = choice.finish_reason or finish
                if chunk.usage is not None:
                    yield StreamEnd(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                        finish_reason=finish_reason_from(finish),
                    )
                    return
        if finish is not None:  # a complete answer from a server that reports no usage when streaming
            yield StreamEnd(
                prompt_tokens=0, completion_tokens=text_chunks, finish_reason=finish_reason_from(finish)
            )
            return
        raise BackendError(
            "bad_response", f"the {self.kind} server's stream ended without a finish reason or usage"
        )


@contextlib.asynccontextmanager
async def _translate_errors(*, mid_response: bool = False) -> AsyncIterator[None]:
    """The client's failures as BackendErrors. `mid_response`: the answer has begun (the `openai`
    client reports a connection lost while streaming as an APIConnectionError too)."""
    try:
        yield
    except openai.APITimeoutError as exc:  # before its base class, APIConnectionError
        if not mid_response and isinstance(exc.__cause__, httpx2.ConnectTimeout):
            # Nothing reached the model: safe to send again (the hold, the router).
            raise BackendError(
                "unavailable", f"cannot connect to the inference server within {CONNECT_TIMEOUT_S:g} s"
            ) from None
        raise BackendError("timeout", "the inference server did not answer in time") from None
    except openai.APIConnectionError:
        if mid_response:
            raise BackendError(
                "bad_response", "the inference server closed the connection mid-response"
            ) from None
        raise BackendError("unavailable", "cannot connect to the inference server") from None
    except openai.APIStatusError as exc:
        status = exc.status_code
        if status in (429, 503):
            raise BackendError("unavailable", f"the inference server is overloaded ({status})") from None
        if 400 <= status < 500:
            raise BackendError(
                "rejected", f"the inference server refused the request ({status}): {exc.message}"
            ) from None
        raise BackendError("bad_response", f"the inference server failed ({status})") from None
    except openai.APIError as exc:  # an error event inside the stream
        raise BackendError("bad_response", f"the inference server failed mid-stream: {exc.message}") from None
