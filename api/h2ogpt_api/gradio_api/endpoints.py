"""h2oGPT's `api_name`s and the `/api/<api_name>` REST route, over `GradioService`.

h2oGPT's clients (`gradio_client`, its `GradioClient` wrapper, curl) speak to a Gradio Blocks app
by `api_name`, passing the `str()` of a Python dict and reading back the `str()` of one. This is
the only place that format is read or written (`wire.py`). Every handler turns a failure into
h2oGPT's error shape (a dict with `error`) rather than raising, so a bad request never breaks the
queue or a client's job. The endpoints hang off hidden components with h2oGPT's visible inputs and
outputs, so `gradio_client` sees the same signatures as on an h2oGPT server.
"""

from __future__ import annotations

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
from starlette.responses import JSONResponse, Response

from h2ogpt_api import metrics
from h2ogpt_api.core import Completed, GenerationResult, TextDelta
from h2ogpt_api.gradio_api.service import (
    Caller,
    Collection,
    GradioService,
    failure_message,
    failure_status,
    session_header,
)
from h2ogpt_api.gradio_api.wire import (
    chunk_size_of,
    error_dict,
    key_of,
    params_from_h2ogpt,
    parse_request_dict,
    partial_dict,
    text_list,
)
from h2ogpt_api.retrieval.base import AddResult, Identity

# Streamed outputs are cumulative; sending one per token would re-send the text each time,
# so partial outputs go out at most this often (the first and the final output always go out).
STREAM_MIN_INTERVAL_S = 0.05
# ... and, over all streams together, at most about this many per second: each update costs Gradio
# a few ms of CPU (its queue, a JSON message, an SSE write), so with many streams the interval
# grows with their number (64 streams: 0.4 s) instead of the updates eating the CPU that the
# answers need. Clients lose nothing: every update carries the whole answer so far.
STREAM_PARTIAL_UPDATES_PER_S = 160


class _StreamPacing:
    """How often one stream's partial output may go out, given how many stream at once."""

    def __init__(self) -> None:
        self.streams = 0

    def interval(self) -> float:
        return max(STREAM_MIN_INTERVAL_S, self.streams / STREAM_PARTIAL_UPDATES_PER_S)
# The parameters of h2oGPT's document APIs that come after the content: langchain_mode, chunk,
# chunk_size, embed, then six loader options this server does not use, then h2ogpt_key.
LOADER_OPTION_COUNT = 6
LOADER_OPTION_NAMES = (
    "image_audio_loaders",
    "pdf_loaders",
    "url_loaders",
    "jq_schema",
    "extract_frames",
    "llava_prompt",
)
# The six outputs of h2oGPT's document APIs:
# (None, langchain_mode, sources_text, error_text, last_source, new_sources).
AddOutputs = tuple[None, str, str, str, str, str]
AddMany = Callable[[list[str], Collection, Identity, int], Awaitable[list[AddResult]]]


def source_lines(sources: list[str]) -> str:
    """A collection's source names, one per line (how h2oGPT's document APIs list them)."""
    return "\n".join(sources)


@dataclass
class _Timing:
    """Durations per REST api_name, for the `average_duration` Gradio's REST answers carry."""

    totals: dict[str, tuple[int, float]] = field(default_factory=dict)

    def record(self, name: str, seconds: float) -> float:
        count, total = self.totals.get(name, (0, 0.0))
        self.totals[name] = (count + 1, total + seconds)
        return (total + seconds) / (count + 1)


class _Observation:
    """Metrics of one api call: in flight, duration, first token, tokens, and its status."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.started = time.perf_counter()
        self.status = "200"

    def first_token(self) -> None:
        metrics.TIME_TO_FIRST_TOKEN.labels(route=self.route).observe(time.perf_counter() - self.started)

    def tokens(self, result: GenerationResult) -> None:
        metrics.GENERATED_TOKENS.labels(route=self.route).inc(result.ntokens)
        metrics.PROMPT_TOKENS.labels(route=self.route).inc(result.num_prompt_tokens)

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


class H2oGPTEndpoints:
    """The handlers behind h2oGPT's api_names: wire format in and out, typed calls to the service."""

    def __init__(self, service: GradioService) -> None:
        self.service = service
        self.timing = _Timing()
        self.pacing = _StreamPacing()

    # -- generation ------------------------------------------------------------------------------

    async def submit_nochat(self, text: str, request: gr.Request) -> AsyncGenerator[str, None]:
        """`/submit_nochat_api`: queued; with `stream_output=True` yields the cumulative response."""
        async with _observed("/submit_nochat_api") as observe:
            self.pacing.streams += 1
            try:
                async for output in self._generate(text, request, streaming=True, observe=observe):
                    yield str(output)
            finally:
                self.pacing.streams -= 1

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
            text = None if text is None else str(text)  # what Gradio's Textbox.preprocess gives
            params = params_from_h2ogpt(parse_request_dict(text), streaming=streaming)
            caller = Caller.of(request)
            identity = self.service.identity(caller, params.h2ogpt_key)
            subject = self.service.admit(caller, params.h2ogpt_key)
            last_sent = -math.inf  # the first token goes out at once; later ones are paced
            session = session_header(request)
            async with contextlib.aclosing(self.service.stream(params, identity, session)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        if not pieces:
                            observe.first_token()
                        pieces.append(event.text)
                        now = time.monotonic()
                        if params.stream_output and now - last_sent >= self.pacing.interval():
                            last_sent = now
                            yield partial_dict("".join(pieces))
                    elif isinstance(event, Completed):
                        observe.tokens(event.result)
                        self.service.charge(subject, event.result)
                        yield self._result_dict(event.result)
                        return
        except Exception as exc:  # every failure becomes h2oGPT's error dict, never a broken job
            observe.failed(exc)
            yield error_dict(failure_message(exc), response="".join(pieces))

    def _result_dict(self, result: GenerationResult) -> dict[str, Any]:
        return result.to_h2ogpt_dict(save_dir=str(self.service.settings.save_dir))

    async def model_names(self, request: gr.Request | None = None) -> str:
        """`/model_names`: the `str()` of a list of model dicts."""
        try:
            return str(self.service.model_names(Caller.of(request)))
        except Exception as exc:
            return str(error_dict(failure_message(exc)))

    # -- documents -------------------------------------------------------------------------------

    async def _add(  # noqa: PLR0917 (the shared body of three positional APIs)
        self,
        api_name: str,
        content: object,
        add_many: AddMany,
        langchain_mode: object,
        chunk_size: object,
        h2ogpt_key: object,
        request: gr.Request | None,
    ) -> AddOutputs:
        """The shared body of `/add_text`, `/add_url`, `/add_file_api`."""
        async with _observed(api_name) as observe:
            try:
                caller, key = Caller.of(request), key_of(h2ogpt_key)
                identity = self.service.identity(caller, key)
                self.service.admit(caller, key)
                collection = self.service.collection(langchain_mode)
                size = chunk_size_of(chunk_size, self.service.settings.chunk_size)
                results = await add_many(text_list(content, "the content"), collection, identity, size)
                sources = await self.service.list_sources(collection, identity)
            except Exception as exc:
                observe.failed(exc)
                return None, str(langchain_mode or ""), "", failure_message(exc), "", "[]"
            added = [
                {"source": r.source, "chunks_added": r.chunks_added, "duplicates": r.duplicate_chunks_skipped}
                for r in results
            ]
            return None, collection.name, source_lines(sources), "", results[-1].source, str(added)

    # h2oGPT's document APIs take (content, langchain_mode, chunk, chunk_size, embed, six loader
    # options, h2ogpt_key). Chunking always happens here and the loaders are this server's own,
    # so `chunk`, `embed` and the loader options are accepted and not used.
    async def add_text(  # noqa: PLR0917 (h2oGPT's positional API)
        self,
        text: object,
        langchain_mode: object = None,
        chunk: object = True,
        chunk_size: object = None,
        embed: object = True,
        image_audio_loaders: object = None,
        pdf_loaders: object = None,
        url_loaders: object = None,
        jq_schema: object = None,
        extract_frames: object = None,
        llava_prompt: object = None,
        h2ogpt_key: object = None,
        request: gr.Request | None = None,
    ) -> AddOutputs:
        return await self._add(
            "/add_text", text, self.service.add_texts, langchain_mode, chunk_size, h2ogpt_key, request
        )

    async def add_url(  # noqa: PLR0917 (h2oGPT's positional API)
        self,
        url: object,
        langchain_mode: object = None,
        chunk: object = True,
        chunk_size: object = None,
        embed: object = True,
        image_audio_loaders: object = None,
        pdf_loaders: object = None,
        url_loaders: object = None,
        jq_schema: object = None,
        extract_frames: object = None,
        llava_prompt: object = None,
        h2ogpt_key: object = None,
        request: gr.Request | None = None,
    ) -> AddOutputs:
        return await self._add(
            "/add_url", url, self.service.add_urls, langchain_mode, chunk_size, h2ogpt_key, request
        )

    async def add_file(  # noqa: PLR0917 (h2oGPT's positional API)
        self,
        server_path: object,
        langchain_mode: object = None,
        chunk: object = True,
        chunk_size: object = None,
        embed: object = True,
        image_audio_loaders: object = None,
        pdf_loaders: object = None,
        url_loaders: object = None,
        jq_schema: object = None,
        extract_frames: object = None,
        llava_prompt: object = None,
        h2ogpt_key: object = None,
        request: gr.Request | None = None,
    ) -> AddOutputs:
        return await self._add(
            "/add_file_api",
            server_path,
            self.service.add_uploaded_files,
            langchain_mode,
            chunk_size,
            h2ogpt_key,
            request,
        )

    async def upload(self, file: str | None) -> tuple[str, str]:
        """`/upload_api`: Gradio has stored the upload; answer (file name, server path)."""
        if not file:
            return "", ""
        return Path(file).name, file

    async def get_sources(self, mode: object, key: object = None, request: gr.Request | None = None) -> str:
        """`/get_sources_api`: the `str()` of the list of source names in a collection."""
        async with _observed("/get_sources_api") as observe:
            try:
                identity = self.service.identity(Caller.of(request), key_of(key))
                return str(await self.service.list_sources(self.service.collection(mode), identity))
            except Exception as exc:
                observe.failed(exc)
                return str(error_dict(failure_message(exc)))

    async def delete_sources(
        self, choice: object, mode: object, key: object = None, request: gr.Request | None = None
    ) -> str:
        """`/delete_sources`: delete the named sources (`All` for every one); the sources left."""
        async with _observed("/delete_sources") as observe:
            try:
                identity = self.service.identity(Caller.of(request), key_of(key))
                collection = self.service.collection(mode)
                names = text_list(choice, "document_choice")
                return str(await self.service.delete_sources(names, collection, identity))
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
                identity = self.service.identity(Caller.of(request), key_of(key))
                hits = await self.service.document_chunks(
                    source if isinstance(source, str) else "", self.service.collection(mode), identity
                )
            except Exception as exc:
                observe.failed(exc)
                return str(error_dict(failure_message(exc)))
            metadatas = [
                {"source": hit.source, "chunk_id": hit.chunk_id, "page": hit.page, **hit.metadata}
                for hit in hits
            ]
            return str({"contents": [hit.content for hit in hits], "metadatas": metadatas})

    # -- wiring ----------------------------------------------------------------------------------

    def register(self) -> None:
        """The api_names, on hidden components with h2oGPT's visible inputs and outputs (call
        inside the app's `gr.Blocks`)."""
        public: dict[str, Any] = {"api_visibility": "public"}
        with gr.Column(visible=False):
            trigger = gr.Button("api")
            request_text = gr.Textbox(label="str(dict) of parameters")
            response_text = gr.Textbox(label="str(dict) of the answer")
            # Without Gradio's pre- and postprocessing, which for a Textbox are str() (done in
            # `_generate`; the answers are str already) but which Gradio runs in a worker thread:
            # one thread hop for the input and one for every output, each waiting for the event
            # loop to let go of the GIL.
            as_is: dict[str, Any] = {"preprocess": False, "postprocess": False}
            trigger.click(
                self.submit_nochat,
                [request_text],
                [response_text],
                api_name="submit_nochat_api",
                **as_is,
                **public,
            )
            trigger.click(
                self.submit_nochat_plain,
                [request_text],
                [response_text],
                api_name="submit_nochat_plain_api",
                queue=False,
                **as_is,
                **public,
            )
            models_text = gr.Textbox(label="str(list) of model dicts")
            trigger.click(self.model_names, None, [models_text], api_name="model_names", **public)

            upload_file = gr.File(label="file to upload", type="filepath")
            local_name = gr.Textbox(label="file name")
            server_path = gr.Textbox(label="server path, for /add_file_api")
            trigger.click(
                self.upload, [upload_file], [local_name, server_path], api_name="upload_api", **public
            )

            content = gr.Textbox(label="text, URL or server path (or a list of them)")
            mode = gr.Textbox(label="langchain_mode")
            chunk = gr.Checkbox(label="chunk", value=True)
            chunk_size = gr.Number(label="chunk_size", value=self.service.settings.chunk_size, precision=0)
            embed = gr.Checkbox(label="embed", value=True)
            loaders = [gr.JSON(label=name) for name in LOADER_OPTION_NAMES]
            key = gr.Textbox(label="h2ogpt_key")
            add_inputs = [content, mode, chunk, chunk_size, embed, *loaders, key]
            add_outputs = [
                gr.Textbox(label="unused (None)"),
                gr.Textbox(label="langchain_mode"),
                gr.Textbox(label="sources"),
                gr.Textbox(label="error, or empty"),
                gr.Textbox(label="last source added"),
                gr.Textbox(label="str(list) of what was added"),
            ]
            trigger.click(self.add_file, add_inputs, add_outputs, api_name="add_file_api", **public)
            trigger.click(self.add_url, add_inputs, add_outputs, api_name="add_url", **public)
            trigger.click(self.add_text, add_inputs, add_outputs, api_name="add_text", **public)

            listing = gr.Textbox(label="str(list) of sources")
            trigger.click(self.get_sources, [mode, key], [listing], api_name="get_sources_api", **public)
            document_choice = gr.JSON(label="document_choice: source names, or ['All']")
            trigger.click(
                self.delete_sources,
                [document_choice, mode, key],
                [listing],
                api_name="delete_sources",
                **public,
            )
            document_name = gr.Textbox(label="source name")
            view_raw_text = gr.Checkbox(label="view_raw_text", value=True)
            text_context_list = gr.JSON(label="text_context_list")
            pdf_height = gr.Number(label="pdf_height", value=1000)
            document_text = gr.Textbox(label="str(dict(contents=[...], metadatas=[...]))")
            trigger.click(
                self.get_document,
                [mode, document_name, view_raw_text, text_context_list, pdf_height, key],
                [document_text],
                api_name="get_document_api",
                **public,
            )

    def rest_handlers(self) -> dict[str, tuple[Callable[..., Awaitable[Any]], int]]:
        """The api_names without session state that `POST /api/<api_name>` serves, with their input count."""
        options = 4 + LOADER_OPTION_COUNT + 1  # langchain_mode, chunk, chunk_size, embed, loaders, key
        return {
            "submit_nochat_plain_api": (self.submit_nochat_plain, 1),
            "model_names": (self.model_names, 0),
            "add_text": (self.add_text, 1 + options),
            "add_url": (self.add_url, 1 + options),
            "get_sources_api": (self.get_sources, 2),
            "delete_sources": (self.delete_sources, 3),
            "get_document_api": (self.get_document, 6),
        }

    def add_rest_route(self, app: FastAPI) -> None:
        """`POST /api/<api_name>` with `{"data": [...]}`, as Gradio's REST API answers; HTTP Basic
        credentials log in (there is no session)."""
        handlers = self.rest_handlers()

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
                return JSONResponse({"error": 'the body must be JSON like {"data": [...]}'}, status_code=400)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list) or len(data) > arity:
                return JSONResponse(
                    {
                        "error": f'the body must be {{"data": [...]}} with at most {arity} values '
                        f"for {api_name}"
                    },
                    status_code=400,
                )
            login = _basic_login(request)
            username = None
            if login is not None:
                if not await self.service.check_login(*login):
                    return JSONResponse({"error": "wrong username or password"}, status_code=401)
                username = login[0]
            output = await handler(*data, request=gr.Request(username=username, headers=request.headers))
            outputs = list(output) if isinstance(output, tuple) else [output]
            duration = time.perf_counter() - started
            return JSONResponse(
                {
                    "data": outputs,
                    "is_generating": False,
                    "duration": duration,
                    "average_duration": self.timing.record(api_name, duration),
                }
            )

        app.add_api_route("/api/{api_name}", call_api, methods=["POST"])
        app.add_api_route("/api/{api_name}/", call_api, methods=["POST"], include_in_schema=False)


def _basic_login(request: Request) -> tuple[str, str] | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        name, _, password = base64.b64decode(token.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return name, password
