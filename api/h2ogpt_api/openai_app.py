"""The OpenAI-compatible app: `/v1/*`, `/health`, `/version`, `/metrics`.

Routes are thin: read and validate the body, authenticate, turn the request into
`GenerationParams`, call the core, shape the answer. Failures before the first token get
their HTTP status; a failure after it is one `data: {"error": ...}` event, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.metadata
import json
import logging
import struct
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Match

from h2ogpt_api import metrics
from h2ogpt_api.auth import Authenticator, AuthError
from h2ogpt_api.backends.base import BackendError
from h2ogpt_api.core import (
    Completed,
    Core,
    EmbeddingsUnavailableError,
    GenerationEvent,
    GenerationResult,
    InvalidRequestError,
    QueueFullError,
    TextDelta,
)
from h2ogpt_api.errors import ApiError, as_api_error, validation_error
from h2ogpt_api.params import GenerationParams
from h2ogpt_api.retrieval.base import DocumentError, DocumentStoreUnavailableError, Identity
from h2ogpt_api.settings import Settings

log = logging.getLogger("h2ogpt_api.openai")

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


def generation_params(request: OpenAIRequest, fields: dict[str, Any]) -> GenerationParams:
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


def _new_id(prefix: str) -> str:
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


def _token_usage(result: GenerationResult) -> dict[str, Any]:
    """A stream's usage chunk: token counts, plus h2oGPT's extras when the answer used documents
    (h2oGPT's client reads `sources` from the one usage chunk of a stream)."""
    if result.sources:
        return usage_of(result)
    return {
        "prompt_tokens": result.num_prompt_tokens,
        "completion_tokens": result.ntokens,
        "total_tokens": result.num_prompt_tokens + result.ntokens,
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


_DONE = b"data: [DONE]\n\n"


class _ChunkWriter:
    """Pre-serialized chunk envelopes: per token only the text is JSON-encoded (the hot path)."""

    def __init__(self, envelope: dict[str, Any], choice_key: str, index: int) -> None:
        marker = "\u0000TEXT\u0000"
        choice: dict[str, Any] = {"index": index, choice_key: marker, "logprobs": None, "finish_reason": None}
        if choice_key == "delta":
            choice["delta"] = {"content": marker}
        text = json.dumps({**envelope, "choices": [choice]}, separators=(",", ":"))
        quoted_marker = json.dumps(marker)
        self._head, self._tail = text.split(quoted_marker)
        self._head = "data: " + self._head
        self._tail += "\n\n"

    def text(self, piece: str) -> bytes:
        return (self._head + json.dumps(piece) + self._tail).encode()


class EventStream(StreamingResponse):
    """Server-sent events with less per-request machinery than Starlette's StreamingResponse.

    Starlette watches for a client disconnect with an anyio task group and cancel scopes,
    and ends every stream with an extra empty write. Here one plain asyncio task waits for
    the disconnect and cancels the stream (closing the body, so the upstream generation
    stops too), and the body's last piece, which always ends with `data: [DONE]`, goes out
    in one write together with the end of the chunked response.
    """

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        disconnected = False

        async def cancel_on_disconnect() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            if streaming is not None:
                streaming.cancel()

        watcher = asyncio.create_task(cancel_on_disconnect())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not disconnected or streaming is None:
                raise
            streaming.uncancel()  # the client left: a normal end for this response
        finally:
            watcher.cancel()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async with contextlib.aclosing(self.events) as events:
            async for chunk in events:
                last = chunk.endswith(_DONE)
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                if last:
                    return
        await send({"type": "http.response.body", "body": b"", "more_body": False})




class OpenAIService:
    """The route handlers, holding the core, the settings and the authenticator."""

    def __init__(self, core: Core, settings: Settings) -> None:
        self.core = core
        self.settings = settings
        self.auth = Authenticator(settings)
        self.created = int(time.time())

    # -- request plumbing --------------------------------------------------------------------

    async def read_json(self, request: Request) -> dict[str, Any]:
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes", code="body_too_large")
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_json")
        return data

    def identity(self, request: Request, body_key: str | None, user: str | None) -> Identity:
        bearer = _bearer(request)
        self.auth.check_key(bearer, body_key)
        return self.auth.identify(user)

    def check_model(self, model: str | None) -> str:
        """The model that will answer: the one asked for, or (h2oGPT's behaviour, on by default
        with --model_fallback) the served model when the name is unknown; the response names it."""
        known = [entry["base_model"] for entry in self.core.model_names()]
        if model is None or model in known or self.settings.model_fallback:
            return model if model is not None and model in known else known[0]
        raise ApiError(
            404,
            f"model {model!r} is not served here; available: {known}",
            type_="invalid_request_error",
            param="model",
            code="model_not_found",
        )

    # -- routes ------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = ChatCompletionRequest.model_validate(await self.read_json(request))
        except ValidationError as exc:
            raise validation_error(exc) from None
        identity = self.identity(request, body.h2ogpt_key, body.user)
        model = self.check_model(body.model)
        params = generation_params(body, chat_to_h2ogpt(body.messages))
        route = "/v1/chat/completions"
        if not body.stream:
            result = await self.core.complete(params, identity)
            _observe_result(route, result, started)
            return JSONResponse(
                {
                    "id": _new_id("chatcmpl"),
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": result.response},
                            "logprobs": None,
                            "finish_reason": result.finish_reason,
                        }
                    ],
                    "usage": usage_of(result),
                }
            )
        envelope = {
            "id": _new_id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events, first = await _start(self.core.stream(params, identity))
        metrics.TIME_TO_FIRST_TOKEN.labels(route=route).observe(time.perf_counter() - started)
        writer = _ChunkWriter(envelope, "delta", 0)

        async def chunks() -> AsyncGenerator[bytes, None]:
            # Fewer, larger writes: the role chunk leaves with the first text, and the final
            # chunk, the usage and [DONE] leave together (one write each instead of three).
            pending = _sse(
                {
                    **envelope,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
            async for result in _relay(events, first, writer):
                if isinstance(result, bytes):
                    yield pending + result if pending else result
                    pending = b""
                    continue
                _observe_result(route, result, started)
                pending += _sse(
                    {
                        **envelope,
                        "choices": [
                            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": result.finish_reason}
                        ],
                    }
                )
                if include_usage:
                    pending += _sse({**envelope, "choices": [], "usage": _token_usage(result)})
            yield pending + _DONE

        return EventStream(chunks())

    async def completions(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = CompletionRequest.model_validate(await self.read_json(request))
        except ValidationError as exc:
            raise validation_error(exc) from None
        identity = self.identity(request, body.h2ogpt_key, body.user)
        model = self.check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(400, "prompt must not be an empty list", param="prompt", code="invalid_parameter")
        all_params = [generation_params(body, {"instruction": text}) for text in prompts]
        route = "/v1/completions"
        if not body.stream:
            results = [await self.core.complete(params, identity) for params in all_params]
            for result in results:
                _observe_result(route, result, started)
            return JSONResponse(
                {
                    "id": _new_id("cmpl"),
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": index,
                            "text": result.response,
                            "logprobs": None,
                            "finish_reason": result.finish_reason,
                        }
                        for index, result in enumerate(results)
                    ],
                    "usage": _sum_usage(results),
                }
            )
        envelope = {
            "id": _new_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events, first = await _start(self.core.stream(all_params[0], identity))
        metrics.TIME_TO_FIRST_TOKEN.labels(route=route).observe(time.perf_counter() - started)

        async def chunks() -> AsyncGenerator[bytes, None]:
            results: list[GenerationResult] = []
            current: tuple[AsyncGenerator[GenerationEvent, None], GenerationEvent] | None = (events, first)
            for index, params in enumerate(all_params):
                if current is None:
                    try:
                        current = await _start(self.core.stream(params, identity))
                    except Exception as exc:
                        yield as_api_error(exc).sse_event()
                        break
                async for result in _relay(*current, _ChunkWriter(envelope, "text", index)):
                    if isinstance(result, bytes):
                        yield result
                        continue
                    results.append(result)
                    _observe_result(route, result, started)
                    yield _sse(
                        {
                            **envelope,
                            "choices": [
                                {
                                    "index": index,
                                    "text": "",
                                    "logprobs": None,
                                    "finish_reason": result.finish_reason,
                                }
                            ],
                        }
                    )
                if len(results) <= index:
                    break  # the stream failed; its error event is out
                current = None
            tail = _DONE
            if include_usage and results:
                usage = _sum_usage(results, extras=any(result.sources for result in results))
                tail = _sse({**envelope, "choices": [], "usage": usage}) + _DONE
            yield tail

        return EventStream(chunks())

    async def list_models(self, request: Request) -> Response:
        self.auth.check_key(_bearer(request), None)
        self.auth.require_listing_access(_bearer(request))
        return JSONResponse(
            {"object": "list", "data": [self._model_card(entry) for entry in self.core.model_names()]}
        )

    async def retrieve_model(self, request: Request) -> Response:
        self.auth.check_key(_bearer(request), None)
        self.auth.require_listing_access(_bearer(request))
        name = request.path_params["model"]
        for entry in self.core.model_names():
            if entry["base_model"] == name:
                return JSONResponse(self._model_card(entry))
        raise ApiError(404, f"model {name!r} is not served here", param="model", code="model_not_found")

    def _model_card(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": entry["base_model"],
            "object": "model",
            "created": self.created,
            "owned_by": "h2ogpt-platform",
            **entry,
        }

    async def embeddings(self, request: Request) -> Response:
        try:
            body = EmbeddingRequest.model_validate(await self.read_json(request))
        except ValidationError as exc:
            raise validation_error(exc) from None
        self.identity(request, body.h2ogpt_key, body.user)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not text for text in texts):
            raise ApiError(
                400,
                "input must be a non-empty string or a list of non-empty strings",
                param="input",
                code="invalid_parameter",
            )
        embedder = await self.core.embedder()
        vectors = await embedder.embed(texts)
        data = [
            {"object": "embedding", "index": index, "embedding": _encode_vector(vector, body.encoding_format)}
            for index, vector in enumerate(vectors)
        ]
        count = getattr(embedder, "count_tokens", None)
        tokens = sum(count(text) for text in texts) if callable(count) else 0
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": embedder.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _sum_usage(results: list[GenerationResult], *, extras: bool = True) -> dict[str, Any]:
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


def _observe_result(route: str, result: GenerationResult, started: float) -> None:
    metrics.GENERATED_TOKENS.labels(route=route).inc(result.ntokens)
    log.info(
        "generated route=%s prompt_tokens=%d tokens=%d seconds=%.3f",
        route,
        result.num_prompt_tokens,
        result.ntokens,
        time.perf_counter() - started,
    )


async def _start(
    events: AsyncGenerator[GenerationEvent, None],
) -> tuple[AsyncGenerator[GenerationEvent, None], GenerationEvent]:
    """Wait for the first event, so that a failure before any output gets its HTTP status."""
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    return events, first


async def _relay(
    events: AsyncGenerator[GenerationEvent, None], first: GenerationEvent, writer: _ChunkWriter
) -> AsyncGenerator[bytes | GenerationResult, None]:
    """SSE bytes for each text delta and, last, the result; a failure becomes one error event."""
    async with contextlib.aclosing(events):
        event: GenerationEvent | None = first
        try:
            while event is not None:
                if isinstance(event, TextDelta):
                    if event.text:
                        yield writer.text(event.text)
                elif isinstance(event, Completed):
                    yield event.result
                    return
                event = await anext(events, None)
        except Exception as exc:
            error = as_api_error(exc)
            log.warning("stream failed after it started: %s", error.message)
            yield error.sse_event()


def create_app(core: Core, settings: Settings) -> FastAPI:
    """The OpenAI-compatible FastAPI app over `core`."""
    service = OpenAIService(core, settings)
    app = FastAPI(title="h2oGPT OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return ApiError(
            400, f"invalid parameter {param}: {first['msg']}", param=param, code="invalid_parameter"
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), type_=type_).response()

    async def _mapped_error(_: Request, exc: Exception) -> Response:
        return as_api_error(exc).response()

    for expected in (
        AuthError,
        BackendError,
        DocumentError,
        DocumentStoreUnavailableError,
        EmbeddingsUnavailableError,
        InvalidRequestError,
        QueueFullError,
        ValidationError,
    ):
        app.add_exception_handler(expected, _mapped_error)

    @app.exception_handler(Exception)
    async def _any_error(_: Request, exc: Exception) -> Response:
        log.error("unhandled error: %r", exc)
        return as_api_error(exc).response()

    app.add_api_route("/v1/chat/completions", service.chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", service.completions, methods=["POST"])
    app.add_api_route("/v1/models", service.list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model:path}", service.retrieve_model, methods=["GET"])
    app.add_api_route("/v1/embeddings", service.embeddings, methods=["POST"])

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/version")
    async def version() -> dict[str, str]:
        try:
            return {"version": importlib.metadata.version("h2ogpt-platform")}
        except importlib.metadata.PackageNotFoundError:
            return {"version": "unknown"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    app.add_middleware(MetricsMiddleware, routes=app.router.routes)
    return app


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MetricsMiddleware:
    """Requests by route template and status, their duration (streams to the end) and in-flight count."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    def route_of(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path", "unmatched"))
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route_of(scope)
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_flight = metrics.IN_FLIGHT.labels(route=route)
        in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            in_flight.dec()
            metrics.REQUESTS.labels(route=route, status=str(status)).inc()
            metrics.REQUEST_DURATION.labels(route=route).observe(time.perf_counter() - started)
