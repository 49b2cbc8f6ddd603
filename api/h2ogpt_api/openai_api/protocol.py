"""The OpenAI wire protocol: request models, their mapping onto h2oGPT's parameters, and the
shapes of answers (ids, usage, vectors). Pure functions: no I/O, no app state.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from h2ogpt_api.backends.base import OutputOptions, TokenLogprob
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


# OpenAI fields this server has no way to honour: a request that sets one gets a 400 naming it,
# never an answer that silently ignores it.
_REFUSED_WHEN_SET = ("logit_bias", "echo", "suffix", "best_of")


class StreamOptions(BaseModel):
    include_usage: bool = False


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and not isinstance((self.json_schema or {}).get("schema"), dict):
            raise ValueError("json_schema needs {'name': ..., 'schema': {...}}")
        return self


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
    response_format: ResponseFormat | None = None
    h2ogpt_key: str | None = None

    def refuse_unsupported(self) -> None:
        """A 400 naming the first field set that this server cannot honour."""
        extra = self.model_extra or {}
        for name in _REFUSED_WHEN_SET:
            value = extra.get(name)
            if value in (None, False, "", {}) or (name == "best_of" and value == 1):
                continue
            raise ApiError(
                400, f"{name} is not supported by this server", param=name, code="unsupported_parameter"
            )


class ChatCompletionRequest(OpenAIRequest):
    messages: list[MessageIn] = Field(min_length=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        names = {tool.function.name for tool in self.tools or ()}
        if isinstance(self.tool_choice, dict):
            chosen = (self.tool_choice.get("function") or {}).get("name")
            if chosen not in names:
                raise ValueError(f"tool_choice names {chosen!r}, which is not one of the tools")
        elif self.tool_choice in ("auto", "required") and not names:
            raise ValueError(f"tool_choice {self.tool_choice!r} needs tools")
        return self

    def output_options(self) -> OutputOptions:
        return OutputOptions(
            tools=tuple(tool.model_dump(exclude_none=True) for tool in self.tools or ()),
            tool_choice=self.tool_choice,
            response_format=self.response_format.model_dump(exclude_none=True)
            if self.response_format
            else None,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs or 0,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
        )


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str]
    # The legacy API's logprobs: how many most likely tokens to list at each position (0 = only
    # the chosen token's).
    logprobs: int | None = Field(None, ge=0, le=5)

    def output_options(self) -> OutputOptions:
        return OutputOptions(
            response_format=self.response_format.model_dump(exclude_none=True)
            if self.response_format
            else None,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
        )


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    h2ogpt_key: str | None = None


def message_text(message: MessageIn, index: int) -> str:
    calls = (message.model_extra or {}).get("tool_calls")
    if message.role == "assistant" and calls:
        # h2oGPT's conversation is text: the model sees the calls it made, as JSON.
        text = message.content if isinstance(message.content, str) else ""
        return (text + "\n" if text else "") + "# Tool calls:\n" + json.dumps(calls)
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


def chat_logprobs(logprobs: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """Chat Completions' `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`."""
    return {
        "content": [
            {
                "token": entry.token,
                "logprob": entry.logprob,
                "bytes": list(entry.token.encode()),
                "top_logprobs": [
                    {"token": top.token, "logprob": top.logprob, "bytes": list(top.token.encode())}
                    for top in entry.top
                ],
            }
            for entry in logprobs
        ]
    }


def completion_logprobs(logprobs: tuple[TokenLogprob, ...], text_offset: int = 0) -> dict[str, Any]:
    """The legacy Completions' `logprobs`: parallel lists of tokens, their logprobs, the top
    alternatives as {token: logprob}, and each token's character offset in the answer."""
    offsets = []
    for entry in logprobs:
        offsets.append(text_offset)
        text_offset += len(entry.token)
    return {
        "tokens": [entry.token for entry in logprobs],
        "token_logprobs": [entry.logprob for entry in logprobs],
        "top_logprobs": [{top.token: top.logprob for top in entry.top} for entry in logprobs],
        "text_offset": offsets,
    }


def chat_message(result: GenerationResult) -> dict[str, Any]:
    """The assistant message of a non-streamed chat answer, with its tool calls when it made any."""
    message: dict[str, Any] = {"role": "assistant", "content": result.response}
    if result.tool_calls:
        message["tool_calls"] = list(result.tool_calls)
        message["content"] = result.response or None
    return message


def finish_reason_of(result: GenerationResult) -> str:
    if result.tool_calls and result.finish_reason != "length":
        return "tool_calls"
    return result.finish_reason


# -- the Responses API (/v1/responses) ---------------------------------------------------------

# Responses fields this server cannot honour yet: set, they are a 400 naming them.
_RESPONSES_REFUSED = ("tools", "reasoning", "background", "conversation", "prompt", "include")


class ResponsesRequest(BaseModel):
    """`client.responses.create(...)`: text in, text out; any other key is an h2oGPT parameter."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    user: str | None = None
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None
    h2ogpt_key: str | None = None

    def refuse_unsupported(self) -> None:
        extra = self.model_extra or {}
        for name in _RESPONSES_REFUSED:
            if extra.get(name) not in (None, False, [], {}):
                raise ApiError(
                    400,
                    f"{name} is not supported on /v1/responses by this server"
                    + (" (use /v1/chat/completions for tools)" if name == "tools" else ""),
                    param=name,
                    code="unsupported_parameter",
                )

    def output_options(self) -> OutputOptions:
        """`text.format` (Responses' name for response_format) as output options."""
        spec = dict((self.text or {}).get("format") or {"type": "text"})
        kind = spec.get("type")
        if kind == "json_schema":
            spec = {
                "type": "json_schema",
                "json_schema": {"name": spec.get("name"), "schema": spec.get("schema")},
            }
        try:
            response_format = ResponseFormat.model_validate(spec)
        except ValidationError as exc:
            raise validation_error(exc, prefix=()) from None
        return OutputOptions(response_format=response_format.model_dump(exclude_none=True))


def responses_input_messages(request: ResponsesRequest) -> list[MessageIn]:
    """The request's `input` as chat messages: a string is one user message; items are messages
    whose content is text or `input_text` / `output_text` parts."""
    if isinstance(request.input, str):
        return [MessageIn(role="user", content=request.input)]
    messages = []
    for index, item in enumerate(request.input):
        if item.get("type", "message") != "message" or "role" not in item:
            raise ApiError(
                400,
                f"input[{index}]: only message items are supported, got {item.get('type')!r}",
                param=f"input.{index}",
                code="unsupported_content",
            )
        content = item.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") not in ("input_text", "output_text", "text"):
                    raise ApiError(
                        400,
                        f"input[{index}]: only text content parts are supported, got {part.get('type')!r}",
                        param=f"input.{index}.content",
                        code="unsupported_content",
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        try:
            messages.append(MessageIn(role=item["role"], content=content))
        except ValidationError as exc:
            raise validation_error(exc, prefix=()) from None
    if not messages:
        raise ApiError(400, "input must not be empty", param="input", code="invalid_parameter")
    return messages


def responses_params(
    request: ResponsesRequest, history: list[MessageIn], messages: list[MessageIn]
) -> GenerationParams:
    """h2oGPT's parameters for a Responses call: `instructions` as the system prompt (not carried
    to the next turn, as OpenAI does), earlier turns, then this input."""
    turns = ([MessageIn(role="system", content=request.instructions)] if request.instructions else []) + [
        *history,
        *messages,
    ]
    data: dict[str, Any] = {
        k: v for k, v in (request.model_extra or {}).items() if k not in _RESPONSES_REFUSED
    }
    data.update(chat_to_h2ogpt(turns))
    if request.max_output_tokens is not None:
        data["max_new_tokens"] = request.max_output_tokens
    for name in ("temperature", "top_p", "h2ogpt_key"):
        value = getattr(request, name)
        if value is not None:
            data[name] = value
    data["stream_output"] = request.stream
    try:
        return GenerationParams.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def responses_usage(result: GenerationResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "input_tokens": result.num_prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": result.ntokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": result.num_prompt_tokens + result.ntokens,
    }


def output_message(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content if status == "completed" else [],
    }


def response_object(
    request: ResponsesRequest,
    *,
    response_id: str,
    item_id: str,
    model: str,
    created: int,
    result: GenerationResult | None,
) -> dict[str, Any]:
    """A Response: in progress (no result yet) or completed / incomplete (cut at max tokens)."""
    if result is None:
        status, output, incomplete = "in_progress", [], None
    else:
        status = "incomplete" if result.finish_reason == "length" else "completed"
        output = [output_message(item_id, result.response, "completed")]
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "instructions": request.instructions,
        "previous_response_id": request.previous_response_id,
        "max_output_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "metadata": request.metadata or {},
        "text": request.text or {"format": {"type": "text"}},
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "store": request.store,
        "error": None,
        "incomplete_details": incomplete,
        "usage": responses_usage(result),
        "user": request.user,
    }
