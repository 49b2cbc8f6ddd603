"""The Gradio side of `h2ogpt-api`: h2oGPT's `api_name`s, the UI, and the `/api/<api_name>` REST route.

h2oGPT's clients (`gradio_client`, its `GradioClient` wrapper, curl) speak to a Gradio Blocks app
by `api_name`, passing the `str()` of a Python dict and reading back the `str()` of one. This
module registers those names over the same `Core` the OpenAI app uses, so both front doors give
the same answers. Every handler turns a failure into h2oGPT's error shape (a dict with `error`)
rather than raising, so a bad request never breaks the queue or a client's job.

Who is asking: a Gradio login (`request.username`) when the server has users or closed access;
otherwise an anonymous session, whose personal collection (MyData) is scoped to its Gradio
session, as h2oGPT scopes it. The REST route has no session: it takes HTTP Basic credentials,
and anonymous callers are the guest.
"""

from __future__ import annotations

import ast
import base64
import binascii
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from h2ogpt_api import metrics
from h2ogpt_api.auth import Authenticator, AuthError
from h2ogpt_api.core import Completed, Core, GenerationResult, InvalidRequestError, TextDelta
from h2ogpt_api.errors import as_api_error
from h2ogpt_api.params import GenerationParams
from h2ogpt_api.retrieval.base import AddResult, DocumentStore, Identity
from h2ogpt_api.settings import NO_DOCUMENT_MODES, Settings

# h2oGPT's evaluate parameter names (`eval_func_param_names`) plus the extraction prompts its
# client sends: a request may carry any of them (this server ignores those it has no use for,
# as h2oGPT ignores what does not apply). Any other key is a mistake and is refused by name.
H2OGPT_PARAM_NAMES = frozenset(
    """
    instruction iinput context stream_output enable_caching prompt_type prompt_dict chat_template
    temperature top_p top_k penalty_alpha num_beams max_new_tokens min_new_tokens early_stopping
    max_time repetition_penalty num_return_sequences do_sample seed chat instruction_nochat
    iinput_nochat langchain_mode add_chat_history_to_context langchain_action langchain_agents
    top_k_docs chunk chunk_size document_subset document_choice document_source_substrings
    document_source_substrings_op document_content_substrings document_content_substrings_op
    pre_prompt_query prompt_query pre_prompt_summary prompt_summary pre_prompt_extraction
    prompt_extraction hyde_llm_prompt all_docs_start_prompt all_docs_finish_prompt
    user_prompt_for_fake_system_prompt json_object_prompt json_object_prompt_simpler
    json_code_prompt json_code_prompt_if_no_schema json_schema_instruction
    json_preserve_system_prompt json_object_post_prompt_reminder json_code_post_prompt_reminder
    json_code2_post_prompt_reminder system_prompt image_audio_loaders pdf_loaders url_loaders
    jq_schema extract_frames llava_prompt visible_models visible_image_models image_size
    image_quality image_guidance_scale image_num_inference_steps h2ogpt_key add_search_to_context
    chat_conversation text_context_list docs_ordering_type min_max_new_tokens max_input_tokens
    max_total_input_tokens docs_token_handling docs_joiner hyde_level hyde_template
    hyde_show_only_final doc_json_mode metadata_in_context chatbot_role speaker tts_language
    tts_speed image_file image_control images_num_max image_resolution image_format
    rotate_align_resize_image video_frame_period image_batch_image_prompt image_batch_final_prompt
    image_batch_stream visible_vision_models video_file response_format guided_json guided_regex
    guided_choice guided_grammar guided_whitespace_pattern model_lock client_metadata stop
    """.split()  # noqa: SIM905 (a word list reads better than 120 quoted names)
)
# Streamed outputs are cumulative; sending one per token would re-send the text each time,
# so partial outputs go out at most this often (the final output always goes out).
STREAM_MIN_INTERVAL_S = 0.05
# The parameters of h2oGPT's document APIs that come after the content: langchain_mode, chunk,
# chunk_size, embed, then six loader options this server does not use, then h2ogpt_key.
LOADER_OPTION_COUNT = 6


class RequestInputError(ValueError):
    """The request string is not a usable h2oGPT parameter dict."""


def parse_request_dict(text: object) -> dict[str, Any]:
    """h2oGPT's input: the `str()` of a dict of parameters, read with `ast.literal_eval` (never eval)."""
    if not isinstance(text, str):
        raise RequestInputError(f"expected the str() of a dict of parameters, got a {type(text).__name__}")
    try:
        value = ast.literal_eval(text.strip() or "{}")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise RequestInputError(
            f"the input is not a Python dict literal ({type(exc).__name__}); "
            "send str(dict(instruction_nochat=...))"
        ) from None
    if not isinstance(value, dict):
        raise RequestInputError(
            f"the input must be the str() of a dict, got the str() of a {type(value).__name__}"
        )
    bad_keys = [key for key in value if not isinstance(key, str)]
    if bad_keys:
        raise RequestInputError(f"parameter names must be strings, got {bad_keys[0]!r}")
    unknown = sorted(key for key in value if key not in H2OGPT_PARAM_NAMES)
    if unknown:
        raise RequestInputError(f"unknown parameter(s) {unknown}; see h2oGPT's evaluate parameters")
    return value


def generation_params(data: dict[str, Any], *, streaming: bool) -> GenerationParams:
    """The parsed dict as `GenerationParams`; the plain (unqueued) API never streams."""
    fields = {**data, "stream_output": bool(data.get("stream_output", False)) and streaming}
    try:
        return GenerationParams.model_validate(fields)
    except ValidationError as exc:
        raise RequestInputError(as_api_error(exc).message) from None


def error_dict(message: str, *, response: str = "") -> dict[str, Any]:
    """h2oGPT's output on failure: `error` says what went wrong; the other keys are empty."""
    return {
        "response": response,
        "error": message,
        "error_ex": "",
        "sources": [],
        "sources_str": "",
        "prompt_raw": "",
        "llm_answers": [],
        "save_dict": {},
    }


def partial_dict(response: str) -> dict[str, Any]:
    """A streamed output: the cumulative response; sources and metadata come in the last one."""
    return {
        "response": response,
        "error": None,
        "sources": [],
        "sources_str": "",
        "prompt_raw": "",
        "llm_answers": [],
        "save_dict": {},
    }


def failure_message(exc: BaseException) -> str:
    if isinstance(exc, RequestInputError):
        return str(exc)
    return as_api_error(exc).message


def failure_status(exc: BaseException) -> str:
    return "400" if isinstance(exc, RequestInputError) else str(as_api_error(exc).status)


def _text_list(value: object, name: str) -> list[str]:
    """A document API argument that may be one string or a list of them (h2oGPT takes both)."""
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value) if value.strip().startswith("[") else value
        except (ValueError, SyntaxError):
            parsed = value
        value = parsed
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise RequestInputError(f"{name} must be a string or a list of strings")
    cleaned = [item.strip() for item in items if item.strip()]
    if not cleaned:
        raise RequestInputError(f"{name} is empty")
    return cleaned


def _chunk_size(value: object) -> int:
    if value is None or value == "":
        return 512
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise RequestInputError(f"chunk_size must be a whole number, got {value!r}")
    return int(value)


@dataclass
class _Timing:
    """Durations per REST api_name, for the `average_duration` Gradio's REST answers carry."""

    totals: dict[str, tuple[int, float]] = field(default_factory=dict)

    def record(self, name: str, seconds: float) -> float:
        count, total = self.totals.get(name, (0, 0.0))
        self.totals[name] = (count + 1, total + seconds)
        return (total + seconds) / (count + 1)


@dataclass(frozen=True)
class DocumentOptions:
    """The options of one document API call that this server uses."""

    langchain_mode: object
    chunk_size: object
    h2ogpt_key: object


class GradioService:
    """The handlers behind the api_names, holding the core, the settings and the authenticator."""

    def __init__(self, core: Core, settings: Settings) -> None:
        self.core = core
        self.settings = settings
        self.auth = Authenticator(settings)
        self.timing = _Timing()
        self.upload_dir = Path(gr.utils.get_upload_folder()).resolve()

    # -- who is asking ---------------------------------------------------------------------------

    @property
    def login_required(self) -> bool:
        """Gradio's login page is on when users are configured or access is closed."""
        return self.settings.auth_access == "closed" or bool(self.settings.auth.strip())

    def check_login(self, username: str, password: str) -> bool:
        """Gradio's `auth` callable: known users, or (open access) a new name registers."""
        if not username or ":" in username:
            return False
        try:
            self.auth.identify(f"{username}:{password}")
        except AuthError:
            return False
        return True

    def identity(self, request: gr.Request | None, key: object, *, check_key: bool = True) -> Identity:
        if check_key:
            if key is not None and not isinstance(key, str):
                raise RequestInputError("h2ogpt_key must be a string")
            self.auth.check_key(None, key)
        username = getattr(request, "username", None) if request is not None else None
        if username:
            return Identity(username=str(username), authenticated=True)
        if self.settings.auth_access == "closed":
            raise AuthError("access is closed on this server: log in first")
        guest = self.settings.guest_name or "guest"
        session = getattr(request, "session_hash", None) if request is not None else None
        # An anonymous session's MyData is its own scratch space (h2oGPT's behaviour).
        return Identity(username=f"{guest}-session-{session}" if session else guest)

    # -- generation ------------------------------------------------------------------------------

    def prepare(
        self, text: object, request: gr.Request | None, *, streaming: bool
    ) -> tuple[GenerationParams, Identity]:
        params = generation_params(parse_request_dict(text), streaming=streaming)
        return params, self.identity(request, params.h2ogpt_key)

    def result_dict(self, result: GenerationResult) -> dict[str, Any]:
        return result.to_h2ogpt_dict(save_dir=str(self.settings.save_dir))

    async def submit_nochat(self, text: str, request: gr.Request) -> AsyncGenerator[str, None]:
        """`/submit_nochat_api`: queued; with `stream_output=True` yields the cumulative response."""
        async with _observed("/submit_nochat_api") as observe:
            async for output in self._generate(text, request, streaming=True, observe=observe):
                yield str(output)

    async def submit_nochat_plain(self, text: str, request: gr.Request | None = None) -> str:
        """`/submit_nochat_plain_api`: unqueued, never streams (usable by curl)."""
        final: dict[str, Any] = error_dict("generation produced no output")
        async with _observed("/submit_nochat_plain_api") as observe:
            async for output in self._generate(text, request, streaming=False, observe=observe):
                final = output
        return str(final)

    async def _generate(
        self, text: object, request: gr.Request | None, *, streaming: bool, observe: _Observation
    ) -> AsyncGenerator[dict[str, Any], None]:
        pieces: list[str] = []
        try:
            params, identity = self.prepare(text, request, streaming=streaming)
            last_sent = -math.inf  # the first token goes out at once; later ones are paced
            async with contextlib.aclosing(self.core.stream(params, identity)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        if not pieces:
                            observe.first_token()
                        pieces.append(event.text)
                        now = time.monotonic()
                        if params.stream_output and now - last_sent >= STREAM_MIN_INTERVAL_S:
                            last_sent = now
                            yield partial_dict("".join(pieces))
                    elif isinstance(event, Completed):
                        observe.tokens(event.result.ntokens)
                        yield self.result_dict(event.result)
                        return
        except Exception as exc:  # every failure becomes h2oGPT's error dict, never a broken job
            observe.failed(exc)
            yield error_dict(failure_message(exc), response="".join(pieces))

    async def model_names(self, request: gr.Request | None = None) -> str:
        """`/model_names`: the `str()` of a list of model dicts (refused when access is closed and
        nobody logged in, as h2oGPT does)."""
        try:
            self.identity(request, None, check_key=False)
        except AuthError as exc:
            return str(error_dict(str(exc)))
        return str(self.core.model_names())

    # -- documents -------------------------------------------------------------------------------

    def _documents(self, mode: object) -> tuple[DocumentStore, str]:
        if not isinstance(mode, str) or not mode:
            raise RequestInputError("langchain_mode must name a collection, e.g. 'MyData'")
        offered = self.settings.langchain_modes
        if mode not in offered:
            raise InvalidRequestError(
                f"langchain_mode {mode!r} is not offered by this server; choose one of {offered}",
                param="langchain_mode",
            )
        if mode in NO_DOCUMENT_MODES:
            raise InvalidRequestError(
                f"langchain_mode {mode!r} holds no documents; choose one of {self.settings.document_modes}",
                param="langchain_mode",
            )
        if self.core.documents is None:
            raise InvalidRequestError("this server runs without a document store", param="langchain_mode")
        return self.core.documents, mode

    async def _add(
        self,
        api_name: str,
        content: object,
        add_one: Callable[[DocumentStore, str, str, Identity, int], Awaitable[AddResult]],
        options: DocumentOptions,
        request: gr.Request | None,
    ) -> tuple[None, str, str, str, str, str]:
        """The shared body of `/add_text`, `/add_url`, `/add_file_api`: h2oGPT's six outputs
        `(None, langchain_mode, sources_text, error_text, last_source, new_sources)`."""
        async with _observed(api_name) as observe:
            try:
                identity = self.identity(request, options.h2ogpt_key)
                store, mode = self._documents(options.langchain_mode)
                chunk_size = _chunk_size(options.chunk_size)
                results = [
                    await add_one(store, item, mode, identity, chunk_size)
                    for item in _text_list(content, "the content")
                ]
                sources = await store.list_sources(collection=mode, identity=identity)
            except Exception as exc:
                observe.failed(exc)
                return None, str(options.langchain_mode or ""), "", failure_message(exc), "", "[]"
            added = [
                {"source": r.source, "chunks_added": r.chunks_added, "duplicates": r.duplicate_chunks_skipped}
                for r in results
            ]
            return None, mode, sources_text(sources), "", results[-1].source, str(added)

    # h2oGPT's document APIs take (content, langchain_mode, chunk, chunk_size, embed, six loader
    # options, h2ogpt_key). Chunking always happens here and the loaders are this server's own,
    # so `chunk`, `embed` and the loader options are accepted and not used.
    async def add_text(  # noqa: PLR0917 (h2oGPT's positional API)
        self,
        text: object,
        langchain_mode: object = None,
        chunk: object = True,
        chunk_size: object = 512,
        embed: object = True,
        image_audio_loaders: object = None,
        pdf_loaders: object = None,
        url_loaders: object = None,
        jq_schema: object = None,
        extract_frames: object = None,
        llava_prompt: object = None,
        h2ogpt_key: object = None,
        request: gr.Request | None = None,
    ) -> tuple[None, str, str, str, str, str]:
        async def one(store: DocumentStore, item: str, mode: str, who: Identity, size: int) -> AddResult:
            return await store.add_text(item, collection=mode, identity=who, chunk_size=size)

        options = DocumentOptions(langchain_mode, chunk_size, h2ogpt_key)
        return await self._add("/add_text", text, one, options, request)

    async def add_url(  # noqa: PLR0917 (h2oGPT's positional API)
        self,
        url: object,
        langchain_mode: object = None,
        chunk: object = True,
        chunk_size: object = 512,
        embed: object = True,
        image_audio_loaders: object = None,
        pdf_loaders: object = None,
        url_loaders: object = None,
        jq_schema: object = None,
        extract_frames: object = None,
        llava_prompt: object = None,
        h2ogpt_key: object = None,
        request: gr.Request | None = None,
    ) -> tuple[None, str, str, str, str, str]:
        async def one(store: DocumentStore, item: str, mode: str, who: Identity, size: int) -> AddResult:
            return await store.add_url(item, collection=mode, identity=who, chunk_size=size)

        options = DocumentOptions(langchain_mode, chunk_size, h2ogpt_key)
        return await self._add("/add_url", url, one, options, request)

    async def add_file(  # noqa: PLR0917 (h2oGPT's positional API)
        self,
        server_path: object,
        langchain_mode: object = None,
        chunk: object = True,
        chunk_size: object = 512,
        embed: object = True,
        image_audio_loaders: object = None,
        pdf_loaders: object = None,
        url_loaders: object = None,
        jq_schema: object = None,
        extract_frames: object = None,
        llava_prompt: object = None,
        h2ogpt_key: object = None,
        request: gr.Request | None = None,
    ) -> tuple[None, str, str, str, str, str]:
        async def one(store: DocumentStore, item: str, mode: str, who: Identity, size: int) -> AddResult:
            return await store.add_file(
                str(self.uploaded_path(item)), collection=mode, identity=who, chunk_size=size,
                source=Path(item).name,
            )

        options = DocumentOptions(langchain_mode, chunk_size, h2ogpt_key)
        return await self._add("/add_file_api", server_path, one, options, request)

    def uploaded_path(self, path: str) -> Path:
        """Only files uploaded through Gradio may be ingested: never an arbitrary server path."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.upload_dir):
            raise RequestInputError(
                f"{Path(path).name}: not an uploaded file; upload it with /upload_api first "
                "and pass the server path it returns"
            )
        return resolved

    async def upload(self, file: str | None) -> tuple[str, str]:
        """`/upload_api`: Gradio has stored the upload; answer (file name, server path)."""
        if not file:
            return "", ""
        return Path(file).name, file

    async def get_sources(self, mode: object, key: object = None, request: gr.Request | None = None) -> str:
        """`/get_sources_api`: the `str()` of the list of source names in a collection."""
        async with _observed("/get_sources_api") as observe:
            try:
                identity = self.identity(request, key)
                store, name = self._documents(mode)
                return str(await store.list_sources(collection=name, identity=identity))
            except Exception as exc:
                observe.failed(exc)
                return str(error_dict(failure_message(exc)))

    async def delete_sources(
        self, choice: object, mode: object, key: object = None, request: gr.Request | None = None
    ) -> str:
        """`/delete_sources`: delete the named sources (`All` for every one); the sources left."""
        async with _observed("/delete_sources") as observe:
            try:
                identity = self.identity(request, key)
                store, name = self._documents(mode)
                names = _text_list(choice, "document_choice")
                return str(await store.delete_sources(names, collection=name, identity=identity))
            except Exception as exc:
                observe.failed(exc)
                return str(error_dict(failure_message(exc)))

    async def get_document(  # noqa: PLR0917 (h2oGPT's positional API)
        self,
        mode: object,
        source: object,
        view_raw_text: object = True,
        text_context_list: object = None,
        pdf_height: object = None,
        key: object = None,
        request: gr.Request | None = None,
    ) -> str:
        """`/get_document_api`: `str(dict(contents=[...], metadatas=[...]))`, one entry per chunk."""
        async with _observed("/get_document_api") as observe:
            try:
                identity = self.identity(request, key)
                store, name = self._documents(mode)
                if not isinstance(source, str) or not source:
                    raise RequestInputError("the document name must be a non-empty string")
                hits = await store.get_document(source, collection=name, identity=identity)
                if not hits:
                    raise RequestInputError(f"no document named {source!r} in {name}")
            except Exception as exc:
                observe.failed(exc)
                return str(error_dict(failure_message(exc)))
            metadatas = [
                {"source": hit.source, "chunk_id": hit.chunk_id, "page": hit.page, **hit.metadata}
                for hit in hits
            ]
            return str({"contents": [hit.content for hit in hits], "metadatas": metadatas})


def sources_text(sources: list[str]) -> str:
    """The collection's sources as text, one per line (h2oGPT shows its sources the same way)."""
    return "\n".join(sources)


class _Observation:
    """Metrics of one api call: in flight, duration, first token, tokens, and its status."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.started = time.perf_counter()
        self.status = "200"

    def first_token(self) -> None:
        metrics.TIME_TO_FIRST_TOKEN.labels(route=self.route).observe(time.perf_counter() - self.started)

    def tokens(self, count: int) -> None:
        metrics.GENERATED_TOKENS.labels(route=self.route).inc(count)

    def failed(self, exc: BaseException) -> None:
        self.status = failure_status(exc)


@contextlib.asynccontextmanager
async def _observed(route: str) -> AsyncGenerator[_Observation, None]:
    observation = _Observation(route)
    in_flight = metrics.IN_FLIGHT.labels(route=route)
    in_flight.inc()
    try:
        yield observation
    finally:
        in_flight.dec()
        metrics.REQUESTS.labels(route=route, status=observation.status).inc()
        metrics.REQUEST_DURATION.labels(route=route).observe(time.perf_counter() - observation.started)


# -- the REST compatibility route ----------------------------------------------------------------

RestHandler = Callable[..., Awaitable[Any]]


def rest_handlers(service: GradioService) -> dict[str, tuple[RestHandler, int]]:
    """The api_names without session state that `POST /api/<api_name>` serves, with their input count."""
    options = 4 + LOADER_OPTION_COUNT + 1  # langchain_mode, chunk, chunk_size, embed, loaders, key
    return {
        "submit_nochat_plain_api": (service.submit_nochat_plain, 1),
        "model_names": (service.model_names, 0),
        "add_text": (service.add_text, 1 + options),
        "add_url": (service.add_url, 1 + options),
        "get_sources_api": (service.get_sources, 2),
        "delete_sources": (service.delete_sources, 3),
        "get_document_api": (service.get_document, 6),
    }


def _basic_login(request: Request) -> tuple[str, str] | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        name, _, password = base64.b64decode(token.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return name, password


def add_rest_route(app: FastAPI, service: GradioService) -> None:
    handlers = rest_handlers(service)

    async def call_api(api_name: str, request: Request) -> Response:
        started = time.perf_counter()
        entry = handlers.get(api_name)
        if entry is None:
            return JSONResponse(
                {"error": f"no state-less api_name {api_name!r} here; use one of {sorted(handlers)}"},
                status_code=404,
            )
        handler, arity = entry
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be JSON like {\"data\": [...]}"}, status_code=400)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) > arity:
            return JSONResponse(
                {"error": f"the body must be {{\"data\": [...]}} with at most {arity} values for {api_name}"},
                status_code=400,
            )
        login = _basic_login(request)
        username = None
        if login is not None:
            if not service.check_login(*login):
                return JSONResponse({"error": "wrong username or password"}, status_code=401)
            username = login[0]
        output = await handler(*data, request=gr.Request(username=username))
        outputs = list(output) if isinstance(output, tuple) else [output]
        duration = time.perf_counter() - started
        return JSONResponse(
            {
                "data": outputs,
                "is_generating": False,
                "duration": duration,
                "average_duration": service.timing.record(api_name, duration),
            }
        )

    app.add_api_route("/api/{api_name}", call_api, methods=["POST"])
    app.add_api_route("/api/{api_name}/", call_api, methods=["POST"], include_in_schema=False)


def create_app(core: Core, settings: Settings) -> FastAPI:
    """The FastAPI app served on `--gradio_port`: `/health`, `/metrics`, `/api/<name>`, and Gradio at `/`."""
    from h2ogpt_api.gradio_ui import THEME_CSS, build_blocks  # noqa: PLC0415

    service = GradioService(core, settings)
    app = FastAPI(title="h2oGPT Gradio API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    add_rest_route(app, service)
    blocks = build_blocks(service)
    blocks.queue(
        default_concurrency_limit=settings.max_concurrency,
        max_size=settings.max_queue or None,
        api_open=False,
    )
    mounted: FastAPI = gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth=service.check_login if service.login_required else None,
        auth_message="Log in to h2oGPT." if service.login_required else None,
        footer_links=["api"],
        run_history=False,
        show_error=True,
        ssr_mode=False,
        enable_monitoring=False,
        mcp_server=False,
        theme=gr.themes.Soft(),
        css=THEME_CSS,
    )
    return mounted
