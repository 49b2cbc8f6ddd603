"""The chat UI a person uses: a collection picker, Query / Summarize / Extract, documents, the
chat. Its events are private (not part of the API) and call `GradioService` with typed values.
"""

from __future__ import annotations

import ast
import contextlib
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import gradio as gr

from h2ogpt_api.core import Completed, GenerationResult, InvalidRequestError, Progress, TextDelta
from h2ogpt_api.gradio_api.service import Caller, GradioService, failure_message
from h2ogpt_api.params import GenerationParams

ACTIONS = ["Query", "Summarize", "Extract"]
UPLOAD_TYPES = [".pdf", ".txt", ".md", ".html", ".htm", ".docx"]
THEME_CSS = """
#h2ogpt-header h1 { margin-bottom: 0.2em; }
#h2ogpt-model { opacity: 0.8; }
"""
# The UI redraws the whole answer on each update; a few updates a second reads as streaming.
UI_STREAM_INTERVAL_S = 0.05
# h2oGPT's default chunk size for documents added from the UI.
DEFAULT_CHUNK_SIZE = 512
Pairs = list[tuple[str, str]]


def chat_messages(pairs: Pairs) -> list[dict[str, str]]:
    """(user, assistant) pairs as the Chatbot's messages."""
    messages: list[dict[str, str]] = []
    for user, assistant in pairs:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    return messages


def answer_markdown(action: str, response: str) -> str:
    """Extract answers come back as a list literal (h2oGPT's shape); show them as bullets."""
    if action != "Extract":
        return response
    try:
        items = ast.literal_eval(response)
    except (ValueError, SyntaxError):
        return response
    if not isinstance(items, list):
        return response
    return "\n".join(f"- {item}" for item in items)


def sources_markdown(result: GenerationResult) -> str:
    if not result.sources:
        return ""
    lines = ["**Sources**"]
    for index, hit in enumerate(result.sources, start=1):
        where = f", page {hit.page}" if hit.page else ""
        excerpt = " ".join(hit.content.split())[:160]
        lines.append(f"{index}. `{hit.source}`{where} (score {hit.score:.2f}): {excerpt}…")
    return "\n".join(lines)


def progress_text(progress: Progress) -> str:
    """What the answer bubble shows while a Summarize/Extract maps over the parts."""
    if progress.total == 0:
        return f"_{progress.action}: working on the first parts…_"
    return f"_{progress.action}: part {progress.done} of {progress.total} done…_"


def documents_update(names: list[str]) -> Any:
    """The documents dropdown's new choices (the selection cleared)."""
    return gr.update(choices=names, value=[])


def document_markdown(source: str, chunks: list[str]) -> str:
    """A document as stored: its chunks in order, each under its number."""
    parts = [f"**{source}** ({len(chunks)} part{'s' if len(chunks) != 1 else ''})"]
    parts += [f"{index}. {' '.join(chunk.split())}" for index, chunk in enumerate(chunks, start=1)]
    return "\n\n".join(parts)


def build_ui(service: GradioService, blocks: gr.Blocks) -> None:  # noqa: PLR0915 (one layout, read top to bottom)
    """The UI's components and events, inside `blocks` (which the app opens)."""
    settings = service.settings
    model = service.core.model_names()[0]
    document_modes = settings.document_modes if service.core.documents is not None else []
    modes = [mode for mode in settings.langchain_modes if mode in document_modes or mode == "LLM"] or ["LLM"]
    default_mode = settings.langchain_mode if settings.langchain_mode in modes else modes[0]

    with blocks:
        gr.Markdown("# h2oGPT", elem_id="h2ogpt-header")
        gr.Markdown(
            f"Model **{model['display_name']}** · backend `{model['inference_server']}` · "
            f"context {model['max_seq_len']} tokens",
            elem_id="h2ogpt-model",
        )
        pairs = gr.State([])
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                collection = gr.Dropdown(modes, value=default_mode, label="Collection (langchain_mode)")
                action = gr.Radio(ACTIONS, value="Query", label="Action")
                top_k = gr.Slider(1, 20, value=4, step=1, label="Document parts to use (top_k_docs)")
                key = gr.Textbox(
                    label="API key (h2ogpt_key)",
                    type="password",
                    visible=settings.enforce_h2ogpt_api_key,
                )
                with gr.Accordion("Add documents", open=bool(document_modes), visible=bool(document_modes)):
                    files = gr.File(file_count="multiple", file_types=UPLOAD_TYPES, label="Upload files")
                    url = gr.Textbox(label="URL", placeholder="https://...")
                    add_url_button = gr.Button("Add URL")
                    ingest_status = gr.Markdown(elem_id="h2ogpt-ingest-status")
                with gr.Accordion("Documents", open=bool(document_modes), visible=bool(document_modes)):
                    documents = gr.Dropdown(
                        [],
                        value=[],
                        multiselect=True,
                        label="Documents in this collection",
                        elem_id="h2ogpt-documents",
                    )
                    with gr.Row():
                        view_button = gr.Button("View", size="sm", elem_id="h2ogpt-view")
                        delete_button = gr.Button(
                            "Delete", size="sm", variant="stop", elem_id="h2ogpt-delete"
                        )
                        refresh_button = gr.Button("Refresh", size="sm")
                    document_view = gr.Markdown(elem_id="h2ogpt-document-view")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=480)
                with gr.Row():
                    prompt = gr.Textbox(
                        placeholder="Ask a question, or leave empty to summarize the collection",
                        show_label=False,
                        scale=6,
                        autofocus=True,
                        elem_id="h2ogpt-prompt",
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="h2ogpt-send")
                    stop = gr.Button("Stop", scale=1)
                sources_view = gr.Markdown(elem_id="h2ogpt-sources")
                clear = gr.Button("Clear chat", size="sm")

        async def chat(  # noqa: PLR0917 (Gradio passes inputs positionally)
            message: str,
            history: Pairs,
            mode: str,
            act: str,
            k: float,
            api_key: str,
            request: gr.Request,
        ) -> AsyncGenerator[tuple[Any, ...], None]:
            if not message.strip() and act == "Query":
                yield chat_messages(history), history, "", ""
                return
            shown = message or f"({act} the collection)"
            turns = [*history, (shown, "")]
            yield chat_messages(turns), history, "", ""
            pieces: list[str] = []
            try:
                caller = Caller.of(request)
                identity = service.identity(caller, api_key or None)
                subject = service.admit(caller, api_key or None)
                params = GenerationParams(
                    instruction=message,
                    langchain_mode=mode,
                    langchain_action=act,
                    top_k_docs=int(k),
                    stream_output=True,
                    chat_conversation=history if act == "Query" else [],
                )
                last = time.monotonic()
                async with contextlib.aclosing(service.stream(params, identity)) as events:
                    async for event in events:
                        if isinstance(event, Progress) and not pieces:
                            turns[-1] = (shown, progress_text(event))
                            yield chat_messages(turns), history, "", ""
                        elif isinstance(event, TextDelta):
                            pieces.append(event.text)
                            if time.monotonic() - last >= UI_STREAM_INTERVAL_S:
                                last = time.monotonic()
                                turns[-1] = (shown, "".join(pieces))
                                yield chat_messages(turns), history, "", ""
                        elif isinstance(event, Completed):
                            service.charge(subject, event.result)
                            answer = answer_markdown(act, event.result.response)
                            turns[-1] = (shown, answer)
                            yield chat_messages(turns), turns, "", sources_markdown(event.result)
            except Exception as exc:  # shown in the chat, the session goes on
                turns[-1] = (shown, "".join(pieces) + f"\n\n**Error:** {failure_message(exc)}")
                yield chat_messages(turns), turns, "", ""

        async def document_names(mode: str, api_key: str, request: gr.Request) -> tuple[list[str], str]:
            """The collection's documents, or none and the reason."""
            if mode not in document_modes:
                return [], ""
            try:
                identity = service.identity(Caller.of(request), api_key or None)
                return await service.list_sources(service.collection(mode), identity), ""
            except Exception as exc:  # shown in the panel, the session goes on
                return [], f"**Error:** {failure_message(exc)}"

        async def refresh(mode: str, api_key: str, request: gr.Request) -> tuple[Any, str]:
            names, error = await document_names(mode, api_key, request)
            return documents_update(names), error or ("" if names else "(no documents yet)")

        async def upload_files(
            paths: list[str] | None, mode: str, api_key: str, request: gr.Request
        ) -> AsyncGenerator[tuple[str, Any], None]:
            """One file at a time, saying which: "Adding file 2 of 5: notes.pdf"."""
            paths = paths or []
            try:
                identity = service.identity(Caller.of(request), api_key or None)
                chosen_collection = service.collection(mode)
                for index, path in enumerate(paths, start=1):
                    yield f"Adding file {index} of {len(paths)}: `{Path(path).name}`…", gr.skip()
                    await service.add_uploaded_files([path], chosen_collection, identity, DEFAULT_CHUNK_SIZE)
                status = f"Added {len(paths)} file(s) to {mode}." if paths else ""
            except Exception as exc:
                status = f"**Error:** {failure_message(exc)}"
            names, error = await document_names(mode, api_key, request)
            yield error or status, documents_update(names)

        async def add_url_ui(
            address: str, mode: str, api_key: str, request: gr.Request
        ) -> tuple[str, str, Any]:
            try:
                if not address.strip():
                    raise InvalidRequestError("enter a URL first", param="url")
                identity = service.identity(Caller.of(request), api_key or None)
                results = await service.add_urls(
                    [address.strip()], service.collection(mode), identity, DEFAULT_CHUNK_SIZE
                )
                status, address = f"Added `{results[-1].source}` to {mode}.", ""
            except Exception as exc:  # shown beside the field, which keeps what was typed
                status = f"**Error:** {failure_message(exc)}"
            names, _ = await document_names(mode, api_key, request)
            return status, address, documents_update(names)

        async def view_document(
            chosen: list[str] | None, mode: str, api_key: str, request: gr.Request
        ) -> str:
            if not chosen:
                return "Choose a document to view."
            try:
                identity = service.identity(Caller.of(request), api_key or None)
                chunks = await service.document_chunks(chosen[0], service.collection(mode), identity)
            except Exception as exc:
                return f"**Error:** {failure_message(exc)}"
            return document_markdown(chosen[0], [hit.content for hit in chunks])

        async def delete_documents(
            chosen: list[str] | None, mode: str, api_key: str, request: gr.Request
        ) -> tuple[str, Any, str]:
            if not chosen:
                return "Choose the documents to delete.", gr.skip(), ""
            try:
                identity = service.identity(Caller.of(request), api_key or None)
                left = await service.delete_sources(list(chosen), service.collection(mode), identity)
            except Exception as exc:
                return f"**Error:** {failure_message(exc)}", gr.skip(), ""
            return f"Deleted {len(chosen)} document(s) from {mode}.", documents_update(left), ""

        chat_inputs = [prompt, pairs, collection, action, top_k, key]
        chat_outputs = [chatbot, pairs, prompt, sources_view]
        private: dict[str, Any] = {"api_visibility": "private"}
        submitted = prompt.submit(chat, chat_inputs, chat_outputs, **private)
        clicked = send.click(chat, chat_inputs, chat_outputs, **private)
        stop.click(None, None, None, cancels=[submitted, clicked], **private)
        clear.click(lambda: ([], [], ""), None, [chatbot, pairs, sources_view], queue=False, **private)
        documents_panel = [documents, ingest_status]
        files.upload(upload_files, [files, collection, key], [ingest_status, documents], **private)
        add_url_button.click(add_url_ui, [url, collection, key], [ingest_status, url, documents], **private)
        view_button.click(view_document, [documents, collection, key], [document_view], **private)
        delete_button.click(
            delete_documents,
            [documents, collection, key],
            [ingest_status, documents, document_view],
            **private,
        )
        refresh_button.click(refresh, [collection, key], documents_panel, **private)
        collection.change(refresh, [collection, key], documents_panel, **private)
        blocks.load(refresh, [collection, key], documents_panel, **private)
