"""Server-sent events for the OpenAI routes: pre-serialized chunks, the response class, and the
relay from core events to SSE bytes (a failure after the first byte is one error event)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import orjson
from starlette.responses import StreamingResponse

from h2ogpt_api.backends.base import Held, TokenLogprob, ToolCallDelta
from h2ogpt_api.core import Completed, GenerationEvent, GenerationResult, Progress, TextDelta
from h2ogpt_api.errors import ApiError, as_api_error

log = logging.getLogger("h2ogpt_api.openai")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")


def sse(payload: dict[str, Any]) -> bytes:
    # orjson: compact like json.dumps with tight separators, in a fraction of its time, and UTF-8 as
    # is rather than \\u-escaped (as OpenAI's own streams send it; both are the same JSON).
    return b"data: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def progress_comment(progress: Progress) -> bytes:
    """An SSE comment line: clients skip it; proxies with idle timeouts see bytes moving."""
    return f": {progress.action} part {progress.done} of {progress.total}\n\n".encode()


def held_comment(held: Held) -> bytes:
    """While no inference replica is ready (scale from zero): clients skip it, proxies see bytes."""
    return f": waiting for an inference replica ({held.seconds:.0f} s)\n\n".encode()


LogprobsShape = Callable[[tuple[TokenLogprob, ...], int], dict[str, Any]]


class ChunkWriter:
    """Pre-serialized chunk envelopes: per token only the text is JSON-encoded (the hot path).
    Tokens with logprobs and tool-call pieces, which only some requests have, are whole chunks
    built by `event` and `tool_call` (`logprobs_shape` gives the route's logprobs format)."""

    def __init__(
        self,
        envelope: dict[str, Any],
        choice_key: str,
        index: int,
        logprobs_shape: LogprobsShape | None = None,
    ) -> None:
        self._envelope = envelope
        self._choice_key = choice_key
        self._index = index
        self._logprobs_shape = logprobs_shape
        self._offset = 0  # characters written so far (the legacy logprobs' text_offset)
        marker = "\u0000TEXT\u0000"
        choice: dict[str, Any] = {"index": index, choice_key: marker, "logprobs": None, "finish_reason": None}
        if choice_key == "delta":
            choice["delta"] = {"content": marker}
        head, tail = orjson.dumps({**envelope, "choices": [choice]}).split(orjson.dumps(marker))
        self._head = b"data: " + head
        self._tail = tail + b"\n\n"

    def text(self, piece: str) -> bytes:
        return self._head + orjson.dumps(piece) + self._tail

    def _chunk(self, content: dict[str, Any] | str, logprobs: dict[str, Any] | None) -> bytes:
        choice = {
            "index": self._index,
            self._choice_key: content,
            "logprobs": logprobs,
            "finish_reason": None,
        }
        return sse({**self._envelope, "choices": [choice]})

    def with_logprobs(self, delta: TextDelta) -> bytes:
        shaped = self._logprobs_shape(delta.logprobs, self._offset) if self._logprobs_shape else None
        self._offset += len(delta.text)
        return self._chunk({"content": delta.text} if self._choice_key == "delta" else delta.text, shaped)

    def tool_call(self, piece: ToolCallDelta) -> bytes:
        call: dict[str, Any] = {"index": piece.index}
        if piece.id:
            call["id"] = piece.id
            call["type"] = "function"
        function: dict[str, Any] = {"arguments": piece.arguments}
        if piece.name:
            function["name"] = piece.name
        call["function"] = function
        return self._chunk({"tool_calls": [call]}, None)

    def error(self, error: ApiError) -> bytes:
        return error.sse_event()


class ResponseEvents:
    """The Responses API's stream for one message output item with one `output_text` part:
    named events (`event: <type>`), numbered from 0 in `sequence_number`."""

    def __init__(self, item_id: str) -> None:
        self.sequence = 0
        self.where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        self.item_id = item_id

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = orjson.dumps({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    def opening(self, response: dict[str, Any]) -> bytes:
        item = {
            "id": self.item_id,
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        return (
            self.event("response.created", response=response)
            + self.event("response.in_progress", response=response)
            + self.event("response.output_item.added", output_index=0, item=item)
            + self.event("response.content_part.added", part=_output_text(""), **self.where)
        )

    def text(self, piece: str) -> bytes:
        return self.event("response.output_text.delta", delta=piece, logprobs=[], **self.where)

    def with_logprobs(self, delta: TextDelta) -> bytes:
        return self.text(delta.text)  # /v1/responses refuses `include` (no logprobs are asked)

    def tool_call(self, piece: ToolCallDelta) -> bytes:
        raise RuntimeError("a tool call on /v1/responses, which refuses tools")

    def closing(self, response: dict[str, Any], text: str) -> bytes:
        """The text's end, then `response.completed` (or `.incomplete`) with the whole response."""
        return (
            self.event("response.output_text.done", text=text, logprobs=[], **self.where)
            + self.event("response.content_part.done", part=_output_text(text), **self.where)
            + self.event("response.output_item.done", output_index=0, item=response["output"][0])
            + self.event(f"response.{response['status']}", response=response)
        )

    def error(self, error: ApiError) -> bytes:
        return self.event("error", code=error.code, message=error.message, param=error.param)


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


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
                last = chunk.endswith(DONE)
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                if last:
                    return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class ClientGoneError(Exception):
    """The client disconnected before its (non-streamed) answer was ready."""


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled (which closes the
    upstream generation and frees its slot) and ClientGoneError is raised.

    For non-streamed answers, whose body is read before the work starts: the next message on
    `receive` can only be the disconnect.
    """
    task = asyncio.ensure_future(work)

    async def client_left() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientGoneError
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def start_stream(
    events: AsyncGenerator[GenerationEvent, None],
) -> tuple[AsyncGenerator[GenerationEvent, None], GenerationEvent]:
    """Wait for the first event, so that a failure before any output gets its HTTP status."""
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    return events, first


async def relay(
    events: AsyncGenerator[GenerationEvent, None],
    first: GenerationEvent,
    writer: ChunkWriter | ResponseEvents,
) -> AsyncGenerator[bytes | GenerationResult, None]:
    """SSE bytes for each text delta (and a comment for each map-step progress) and, last, the
    result; a failure becomes one error event."""
    async with contextlib.aclosing(events):
        event: GenerationEvent | None = first
        try:
            while event is not None:
                if isinstance(event, TextDelta):
                    if event.logprobs:
                        yield writer.with_logprobs(event)
                    elif event.text:
                        yield writer.text(event.text)
                elif isinstance(event, ToolCallDelta):
                    yield writer.tool_call(event)
                elif isinstance(event, Progress):
                    yield progress_comment(event)
                elif isinstance(event, Held):
                    yield held_comment(event)
                elif isinstance(event, Completed):
                    yield event.result
                    return
                event = await anext(events, None)
        except Exception as exc:
            error = as_api_error(exc)
            log.warning("stream failed after it started: %s", error.message)
            yield writer.error(error)
