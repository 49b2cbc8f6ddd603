"""The OpenAI routes: read and validate the body, authenticate, turn the request into
`GenerationParams`, call the core, shape the answer. Failures before the first token get their
HTTP status; a failure after it is one `data: {"error": ...}` event, then `[DONE]`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from h2ogpt_api import metrics
from h2ogpt_api.auth import Authenticator, Principal
from h2ogpt_api.backends.base import OutputOptions
from h2ogpt_api.core import Core, GenerationEvent, GenerationResult
from h2ogpt_api.errors import ApiError, as_api_error, validation_error
from h2ogpt_api.openai_api.conversations import Conversations, ConversationStore, StoredConversation
from h2ogpt_api.openai_api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    MessageIn,
    ResponsesRequest,
    chat_logprobs,
    chat_message,
    chat_to_h2ogpt,
    completion_logprobs,
    encode_vector,
    finish_reason_of,
    new_id,
    params_from_openai,
    response_object,
    responses_input_messages,
    responses_params,
    stream_usage,
    sum_usage,
    usage_of,
)
from h2ogpt_api.openai_api.streaming import (
    DONE,
    ChunkWriter,
    ClientGoneError,
    EventStream,
    ResponseEvents,
    relay,
    sse,
    start_stream,
    unless_client_leaves,
)
from h2ogpt_api.retrieval.base import Identity
from h2ogpt_api.settings import Settings

log = logging.getLogger("h2ogpt_api.openai")

# The generation routes' request types: each has model, user, h2ogpt_key, refuse_unsupported()
# and output_options().
Body = TypeVar("Body", ChatCompletionRequest, CompletionRequest, ResponsesRequest)
T = TypeVar("T")


@dataclass(frozen=True)
class Admitted(Generic[Body]):
    """A generation request past the checks every generation route makes first."""

    body: Body
    principal: Principal
    model: str  # the model that answers (and that the response names)
    options: OutputOptions
    started: float  # time.perf_counter() when the request arrived


class OpenAIRoutes:
    """The `/v1/*` handlers, holding the core, the settings and the authenticator."""

    def __init__(self, core: Core, settings: Settings, conversations: Conversations | None = None) -> None:
        self.core = core
        self.settings = settings
        self.auth = Authenticator(settings, core.logins)
        self.limits = core.limits  # shared with the Gradio front door of this process
        self.created = int(time.time())
        self.conversations: Conversations = conversations or ConversationStore()

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

    async def principal(self, request: Request, body_key: str | None, user: str | None) -> Principal:
        """Who is asking (key, then login), admitted by the per-key limits."""
        principal = await self.auth.authenticate(_bearer(request), body_key, user)
        if self.limits.enabled:
            self.limits.admit(principal.limit_subject)
        return principal

    def observe(self, route: str, result: GenerationResult, started: float, principal: Principal) -> None:
        """Metrics and the log line of one finished generation; its tokens count against the limits."""
        tokens = result.num_prompt_tokens + result.ntokens
        if self.limits.enabled:
            self.limits.charge(principal.limit_subject, tokens)
        if principal.key_name is not None:
            key_tokens = metrics.KEY_TOKENS
            key_tokens.labels(key_name=principal.key_name, kind="prompt").inc(result.num_prompt_tokens)
            key_tokens.labels(key_name=principal.key_name, kind="completion").inc(result.ntokens)
        _observe_result(route, result, started)

    async def admit(self, request: Request, body_type: type[Body]) -> Admitted[Body]:
        """Read and validate the body, refuse what this server cannot honour, authenticate and
        admit the caller, and settle the model: in that order, so the first fault is the one
        reported."""
        started = time.perf_counter()
        try:
            body = body_type.model_validate(await self.read_json(request))
        except ValidationError as exc:
            raise validation_error(exc) from None
        body.refuse_unsupported()
        principal = await self.principal(request, body.h2ogpt_key, body.user)
        model = self.check_model(body.model)
        return Admitted(body, principal, model, body.output_options(), started)

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
        admitted = await self.admit(request, ChatCompletionRequest)
        body, principal, model, options, started = (
            admitted.body, admitted.principal, admitted.model, admitted.options, admitted.started
        )
        identity = principal.identity
        params = params_from_openai(body, chat_to_h2ogpt(body.messages))
        route = "/v1/chat/completions"
        if not body.stream:
            answer = self.core.complete(params, identity, options)
            result = await _unless_client_leaves(request, route, answer)
            self.observe(route, result, started, principal)
            return JSONResponse(
                {
                    "id": new_id("chatcmpl"),
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": chat_message(result),
                            "logprobs": chat_logprobs(result.logprobs) if body.logprobs else None,
                            "finish_reason": finish_reason_of(result),
                        }
                    ],
                    "usage": usage_of(result),
                }
            )
        envelope = {
            "id": new_id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events, first = await start_stream(self.core.stream(params, identity, options))
        metrics.TIME_TO_FIRST_TOKEN.labels(route=route).observe(time.perf_counter() - started)
        writer = ChunkWriter(
            envelope, "delta", 0, (lambda logprobs, _: chat_logprobs(logprobs)) if body.logprobs else None
        )

        async def chunks() -> AsyncGenerator[bytes, None]:
            # Fewer, larger writes: the role chunk leaves with the first text, and the final
            # chunk, the usage and [DONE] leave together (one write each instead of three).
            pending = sse(
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
            async with contextlib.aclosing(relay(events, first, writer)) as relayed:
                async for result in relayed:
                    if isinstance(result, bytes):
                        yield pending + result if pending else result
                        pending = b""
                        continue
                    self.observe(route, result, started, principal)
                    pending += sse(
                        {
                            **envelope,
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {},
                                    "logprobs": None,
                                    "finish_reason": finish_reason_of(result),
                                }
                            ],
                        }
                    )
                    if include_usage:
                        pending += sse({**envelope, "choices": [], "usage": stream_usage(result)})
            yield pending + DONE

        return EventStream(chunks())

    async def completions(self, request: Request) -> Response:
        admitted = await self.admit(request, CompletionRequest)
        body, principal, model, options, started = (
            admitted.body, admitted.principal, admitted.model, admitted.options, admitted.started
        )
        identity = principal.identity
        want_logprobs = body.logprobs is not None
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(400, "prompt must not be an empty list", param="prompt", code="invalid_parameter")
        all_params = [params_from_openai(body, {"instruction": text}) for text in prompts]
        route = "/v1/completions"
        if not body.stream:
            results = await _unless_client_leaves(
                request, route, self._complete_each(all_params, identity, options)
            )
            for result in results:
                self.observe(route, result, started, principal)
            return JSONResponse(
                {
                    "id": new_id("cmpl"),
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": index,
                            "text": result.response,
                            "logprobs": completion_logprobs(result.logprobs) if want_logprobs else None,
                            "finish_reason": result.finish_reason,
                        }
                        for index, result in enumerate(results)
                    ],
                    "usage": sum_usage(results),
                }
            )
        envelope = {
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events, first = await start_stream(self.core.stream(all_params[0], identity, options))
        metrics.TIME_TO_FIRST_TOKEN.labels(route=route).observe(time.perf_counter() - started)

        async def chunks() -> AsyncGenerator[bytes, None]:
            results: list[GenerationResult] = []
            current: tuple[AsyncGenerator[GenerationEvent, None], GenerationEvent] | None = (events, first)
            for index, params in enumerate(all_params):
                if current is None:
                    try:
                        current = await start_stream(self.core.stream(params, identity, options))
                    except Exception as exc:
                        yield as_api_error(exc).sse_event()
                        break
                async with contextlib.aclosing(
                    relay(
                        *current,
                        ChunkWriter(envelope, "text", index, completion_logprobs if want_logprobs else None),
                    )
                ) as relayed:
                    async for result in relayed:
                        if isinstance(result, bytes):
                            yield result
                            continue
                        results.append(result)
                        self.observe(route, result, started, principal)
                        yield sse(
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
            tail = DONE
            if include_usage and results:
                usage = sum_usage(results, extras=any(result.sources for result in results))
                tail = sse({**envelope, "choices": [], "usage": usage}) + DONE
            yield tail

        return EventStream(chunks())

    async def _complete_each(
        self, all_params: list[Any], identity: Identity, options: OutputOptions
    ) -> list[GenerationResult]:
        return [await self.core.complete(params, identity, options) for params in all_params]

    async def responses(self, request: Request) -> Response:
        admitted = await self.admit(request, ResponsesRequest)
        body, principal, model, options, started = (
            admitted.body, admitted.principal, admitted.model, admitted.options, admitted.started
        )
        identity = principal.identity
        history: tuple[MessageIn, ...] = ()
        if body.previous_response_id:
            history = self.conversations.get(body.previous_response_id, identity.username).messages
        messages = responses_input_messages(body)
        params = responses_params(body, list(history), messages)
        route = "/v1/responses"
        response_id, item_id, created = new_id("resp"), new_id("msg"), int(time.time())

        def shaped(result: GenerationResult | None) -> dict[str, Any]:
            return response_object(
                body, response_id=response_id, item_id=item_id, model=model, created=created, result=result
            )

        def remember(result: GenerationResult) -> None:
            if body.store:
                answer = MessageIn(role="assistant", content=result.response)
                self.conversations.put(
                    response_id,
                    StoredConversation(identity.username, (*history, *messages, answer), time.monotonic()),
                )

        if not body.stream:
            answer = self.core.complete(params, identity, options)
            result = await _unless_client_leaves(request, route, answer)
            self.observe(route, result, started, principal)
            remember(result)
            return JSONResponse(shaped(result))
        events, first = await start_stream(self.core.stream(params, identity, options))
        metrics.TIME_TO_FIRST_TOKEN.labels(route=route).observe(time.perf_counter() - started)
        writer = ResponseEvents(item_id)

        async def stream_events() -> AsyncGenerator[bytes, None]:
            yield writer.opening(shaped(None))
            async with contextlib.aclosing(relay(events, first, writer)) as relayed:
                async for result in relayed:
                    if isinstance(result, bytes):
                        yield result
                        continue
                    self.observe(route, result, started, principal)
                    remember(result)
                    yield writer.closing(shaped(result), result.response)

        return EventStream(stream_events())

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

    async def internal_model_info(self, request: Request) -> Response:
        """h2oGPT's `/v1/internal/model/info`: `{"model_names": [<its /model_names dicts>]}`."""
        self.auth.check_key(_bearer(request), None)
        self.auth.require_listing_access(_bearer(request))
        return JSONResponse({"model_names": self.core.model_names()})

    async def internal_model_list(self, request: Request) -> Response:
        """h2oGPT's `/v1/internal/model/list`: `[{"id": <base_model>}, ...]` (what its handler's
        `[dict(id=x) for x in ...]` means; h2oGPT itself iterates a dict there and answers
        `[{"id": "model_names"}]`)."""
        self.auth.check_key(_bearer(request), None)
        self.auth.require_listing_access(_bearer(request))
        return JSONResponse([{"id": entry["base_model"]} for entry in self.core.model_names()])

    async def embeddings(self, request: Request) -> Response:
        try:
            body = EmbeddingRequest.model_validate(await self.read_json(request))
        except ValidationError as exc:
            raise validation_error(exc) from None
        principal = await self.principal(request, body.h2ogpt_key, body.user)
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
            {"object": "embedding", "index": index, "embedding": encode_vector(vector, body.encoding_format)}
            for index, vector in enumerate(vectors)
        ]
        count = getattr(embedder, "count_tokens", None)
        tokens = sum(count(text) for text in texts) if callable(count) else 0
        if self.limits.enabled:
            self.limits.charge(principal.limit_subject, tokens)
        if principal.key_name is not None:
            metrics.KEY_TOKENS.labels(key_name=principal.key_name, kind="prompt").inc(tokens)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": embedder.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def add_to(self, app: FastAPI) -> None:
        for path, endpoint, method in (
            ("/v1/chat/completions", self.chat_completions, "POST"),
            ("/v1/completions", self.completions, "POST"),
            ("/v1/responses", self.responses, "POST"),
            ("/v1/models", self.list_models, "GET"),
            ("/v1/models/{model:path}", self.retrieve_model, "GET"),
            ("/v1/embeddings", self.embeddings, "POST"),
            # h2oGPT's internal model routes (its own clients and UIs read them).
            ("/v1/internal/model/info", self.internal_model_info, "GET"),
            ("/v1/internal/model/list", self.internal_model_list, "GET"),
        ):
            app.router.add_api_route(path, endpoint, methods=[method], route_class_override=RequestRoute)


class RequestRoute(APIRoute):
    """A route whose endpoint reads the Request and returns the Response itself, as every /v1 handler
    here does. FastAPI's request handler (dependencies, body and response models) has nothing to do
    for such an endpoint but cost 18 us of the ~180 us each streamed request spent in this process
    before its first token (bench/openai_proxy.py's TTFT target); the endpoint is called as is. The
    route keeps its FastAPI matching, exception handling and place in /openapi.json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _unless_client_leaves(request: Request, route: str, work: Awaitable[T]) -> T:
    """`work`'s result for a non-streamed answer; when the client leaves first, the work is
    cancelled and ClientGoneError raised, which the app answers with a 499."""
    try:
        return await unless_client_leaves(request.receive, work)
    except ClientGoneError:
        log.info("client left before its answer route=%s: generation cancelled", route)
        raise


def client_gone_response() -> Response:
    """The answer to a client that left: nobody reads it; 499 (nginx's "client closed request")
    is what the request metrics record."""
    return Response(status_code=499)


def _observe_result(route: str, result: GenerationResult, started: float) -> None:
    metrics.GENERATED_TOKENS.labels(route=route).inc(result.ntokens)
    metrics.PROMPT_TOKENS.labels(route=route).inc(result.num_prompt_tokens)
    log.info(
        "generated route=%s prompt_tokens=%d tokens=%d seconds=%.3f",
        route,
        result.num_prompt_tokens,
        result.ntokens,
        time.perf_counter() - started,
    )
