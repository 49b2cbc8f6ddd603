"""The OpenAI wire protocol: request models, their mapping onto h2oGPT's parameters, and the
shapes of answers (ids, usage, vectors). Pure functions: no I/O, no app state.
"""

from __future__ import annotations

import base64
import struct
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from h2ogpt_api.core import GenerationResult
from h2ogpt_api.errors import ApiError, validation_error
from h2ogpt_api.params import GenerationParams

# OpenAI request fields that are not h2oGPT parameters (not passed on as such).
_OPENAI_ONLY = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "n",
        "user",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "echo",
        "suffix",
        "best_of",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stop",
    }
)


class StreamOptions(BaseModel):
    include_usage: bool = False


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class OpenAIRequest(BaseModel):
    """Fields both generation routes share; any other key is an h2oGPT parameter (`extra_body`)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per prompt is supported")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    h2ogpt_key: str | None = None


class ChatCompletionRequest(OpenAIRequest):
    messages: list[MessageIn] = Field(min_length=1)


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    h2ogpt_key: str | None = None


def message_text(message: MessageIn, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.get("type") != "text":
            raise ApiError(
                400,
                f"messages[{index}]: only text content parts are supported, got {part.get('type')!r}",
                param=f"messages.{index}.content",
                code="unsupported_content",
            )
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def chat_to_h2ogpt(messages: list[MessageIn]) -> dict[str, Any]:
    """OpenAI messages as h2oGPT's instruction, system_prompt and chat_conversation."""
    system_parts: list[str] = []
    turns: list[tuple[str, str]] = []  # (role, text) of the conversation proper
    for index, message in enumerate(messages):
        text = message_text(message, index)
        if message.role in ("system", "developer"):
            system_parts.append(text)
        elif message.role == "tool":
            turns.append(("user", f"# Tool result:\n{text}"))
        else:
            turns.append((message.role, text))
    fields: dict[str, Any] = {}
    if system_parts:
        fields["system_prompt"] = "\n\n".join(system_parts)
    instruction = ""
    if turns and turns[-1][0] == "user":
        instruction = turns.pop()[1]
    history: list[tuple[str, str]] = []
    pending_user: str | None = None
    for role, text in turns:
        if role == "user":
            if pending_user is not None:
                history.append((pending_user, ""))
            pending_user = text
        else:
            history.append((pending_user or "", text))
            pending_user = None
    if pending_user is not None:
        history.append((pending_user, ""))
    fields["instruction"] = instruction
    if history:
        fields["chat_conversation"] = history
    return fields


def params_from_openai(request: OpenAIRequest, fields: dict[str, Any]) -> GenerationParams:
    """OpenAI names mapped to h2oGPT's (max_tokens -> max_new_tokens ...), extra_body passed through."""
    data: dict[str, Any] = {k: v for k, v in (request.model_extra or {}).items() if k not in _OPENAI_ONLY}
    data.update(fields)
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None:
        data["max_new_tokens"] = max_tokens
    for name in ("temperature", "top_p", "seed", "stop", "h2ogpt_key"):
        value = getattr(request, name)
        if value is not None:
            data[name] = value
    if request.presence_penalty > 0 and "repetition_penalty" not in data:
        data["repetition_penalty"] = 1.0 + 0.5 * request.presence_penalty  # h2oGPT's mapping
    data["stream_output"] = request.stream
    try:
        return GenerationParams.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage_of(result: GenerationResult) -> dict[str, Any]:
    """OpenAI usage, plus h2oGPT's extras (sources, prompt_raw, save_dict) that its own client reads."""
    extras = result.to_h2ogpt_dict()
    extras.pop("response")
    return {
        "prompt_tokens": result.num_prompt_tokens,
        "completion_tokens": result.ntokens,
        "total_tokens": result.num_prompt_tokens + result.ntokens,
        **extras,
    }


def stream_usage(result: GenerationResult) -> dict[str, Any]:
    """A stream's usage chunk: token counts, plus h2oGPT's extras when the answer used documents
    (h2oGPT's client reads `sources` from the one usage chunk of a stream)."""
    if result.sources:
        return usage_of(result)
    return {
        "prompt_tokens": result.num_prompt_tokens,
        "completion_tokens": result.ntokens,
        "total_tokens": result.num_prompt_tokens + result.ntokens,
    }


def sum_usage(results: list[GenerationResult], *, extras: bool = True) -> dict[str, Any]:
    """Usage over several results (one per prompt of a completions call); h2oGPT's extras when
    there is one result to take them from."""
    prompt_tokens = sum(r.num_prompt_tokens for r in results)
    completion_tokens = sum(r.ntokens for r in results)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if extras and len(results) == 1:
        usage = {**usage_of(results[0]), **usage}
    return usage


def encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    """An embedding as OpenAI sends it: a list of floats, or base64 of little-endian float32."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
