"""The core both front doors call: generation, document Q&A, Summarize / Extract, model listing.

`Core.stream` yields `TextDelta`s and ends with one `Completed` carrying a
`GenerationResult` (real token counts, the exact prompt, the sources). Errors are raised as
exceptions the apps map to statuses: `InvalidRequestError` (400), `QueueFullError` (429),
`BackendError` (502/503/504), `EmbeddingsUnavailableError` (503).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from h2ogpt_api import mapreduce, metrics, prompts, routing
from h2ogpt_api.auth import LoginRegistry, MemoryLogins
from h2ogpt_api.backends.base import (
    NO_OUTPUT_OPTIONS,
    Backend,
    BackendError,
    BackendRequest,
    FinishReason,
    Held,
    OutputOptions,
    Sampling,
    StreamEnd,
    TokenDelta,
    TokenLogprob,
    ToolCallDelta,
)
from h2ogpt_api.params import GenerationParams
from h2ogpt_api.ratelimit import RateLimits
from h2ogpt_api.retrieval.base import DocumentError, DocumentStore, Embedder, Hit, Identity
from h2ogpt_api.settings import NO_DOCUMENT_MODES, Settings

TEXT_CONTEXT_SOURCE = "text_context_list"
# h2oGPT's spellings of "the model's default system prompt".
AUTO_SYSTEM_PROMPTS = frozenset({"auto", "None"})
# Rough characters per token, to budget context text before it reaches a tokenizer.
CHARS_PER_TOKEN = 3


class InvalidRequestError(ValueError):
    """The request cannot be served as asked; `param` names the parameter at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class QueueFullError(Exception):
    """More requests are waiting for a generation slot than `--max_queue` allows."""


class EmbeddingsUnavailableError(Exception):
    """No embedding model could be loaded."""


# A new piece of the answer: the backend's own event, passed through as is (one object per
# token on the hot path, not two).
TextDelta = TokenDelta


@dataclass(frozen=True)
class GenerationResult:
    response: str
    sources: list[Hit]
    prompt: str
    base_model: str
    num_prompt_tokens: int
    ntokens: int
    t_generate: float
    tokens_persecond: float
    finish_reason: FinishReason
    error: str | None = None
    # OpenAI tool calls ({"id", "type": "function", "function": {"name", "arguments"}}) and
    # per-token logprobs, when the request asked for them and the backend returned them.
    tool_calls: tuple[dict[str, Any], ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()

    def to_h2ogpt_dict(
        self, *, display_name: str | None = None, save_dir: str = "", extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """h2oGPT's output dict (the Gradio side sends `str()` of it)."""
        sources = [hit.as_h2ogpt_source(index) for index, hit in enumerate(self.sources)]
        return {
            "response": self.response,
            "sources": sources,
            "sources_str": sources_text(self.sources),
            "prompt_raw": self.prompt,
            "llm_answers": [],
            "save_dict": {
                "prompt": self.prompt,
                "output": self.response,
                "base_model": self.base_model,
                "display_name": display_name or self.base_model,
                "save_dir": save_dir,
                "where_from": "h2ogpt_api.core",
                "error": self.error,
                "extra_dict": {
                    "num_prompt_tokens": self.num_prompt_tokens,
                    "ntokens": self.ntokens,
                    "tokens_persecond": self.tokens_persecond,
                    "t_generate": self.t_generate,
                    "finish_reason": self.finish_reason,
                    **(extra or {}),
                },
            },
            "error": self.error,
        }


@dataclass(frozen=True)
class Completed:
    result: GenerationResult


@dataclass(frozen=True)
class Progress:
    """How far the map step of a Summarize or Extract is: `done` of `total` calls (0 of 0 before
    the first call ends). Sent when a call ends and, while none does, every `--keepalive_seconds`,
    so a UI can say "part 3 of 10" and an idle proxy does not cut a long stream."""

    action: str
    done: int
    total: int


# `Held`: no inference replica is ready yet and the request waits for one (backends/holding.py).
GenerationEvent = TextDelta | ToolCallDelta | Held | Progress | Completed


def assemble_tool_calls(pieces: Sequence[ToolCallDelta]) -> tuple[dict[str, Any], ...]:
    """Streamed tool-call pieces as whole OpenAI tool calls, in index order."""
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        call = calls.setdefault(
            piece.index,
            {"id": f"call_{piece.index}", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if piece.id:
            call["id"] = piece.id
        if piece.name:
            call["function"]["name"] = piece.name
        call["function"]["arguments"] += piece.arguments
    return tuple(calls[index] for index in sorted(calls))


def sources_text(hits: Sequence[Hit]) -> str:
    """h2oGPT's `sources_str`: one line per source with its score."""
    if not hits:
        return ""
    lines = [f"{index + 1}. {hit.source} (score {hit.score:.3f})" for index, hit in enumerate(hits)]
    return "Sources:\n" + "\n".join(lines)


# Request parameters whose default is the server's flag of the same name (h2oGPT's rule: the
# command line sets what a request leaves out).
SERVER_DEFAULTED = (
    "max_new_tokens",
    "min_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "max_time",
    "top_k_docs",
)


def with_server_settings(params: GenerationParams, settings: Settings) -> GenerationParams:
    """`params` with the server's defaults for what the request did not set, and its caps
    (--max_max_new_tokens, --max_max_time) on what it did."""
    update: dict[str, Any] = {
        name: getattr(settings, name) for name in SERVER_DEFAULTED if name not in params.model_fields_set
    }
    max_new_tokens = update.get("max_new_tokens", params.max_new_tokens)
    update["max_new_tokens"] = min(max_new_tokens, settings.max_max_new_tokens)
    max_time = update.get("max_time", params.max_time)
    update["max_time"] = min(max_time, settings.max_max_time)
    return params.model_copy(update=update)


class AdmissionGate:
    """At most `limit` generations run (None: no limit of ours), first come first served; at most
    `max_queue` wait; others are refused. The limit can change while serving: it follows what the
    backend says it admits, which may be known only once the backend is up."""

    def __init__(self, limit: int | None, max_queue: int) -> None:
        self.limit = limit
        self._max_queue = max_queue
        self._running = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def set_limit(self, limit: int | None) -> None:
        self.limit = limit
        self._admit_waiting()

    def _has_room(self) -> bool:
        return self.limit is None or self._running < self.limit

    def _admit_waiting(self) -> None:
        while self._waiting and self._has_room():
            waiter = self._waiting.popleft()
            if not waiter.done():  # a waiter cancelled meanwhile is skipped
                self._running += 1
                waiter.set_result(None)

    def _release(self) -> None:
        self._running -= 1
        self._admit_waiting()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._has_room() and not self._waiting:
            self._running += 1
        else:
            if len(self._waiting) >= self._max_queue:
                waiting = len(self._waiting)
                raise QueueFullError(
                    f"the server is at capacity ({waiting} requests already waiting); retry shortly"
                )
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            self._admit_waiting()
            metrics.REQUESTS_WAITING.inc()
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # admitted as the caller was cancelled: hand the slot on
                else:
                    self._waiting.remove(waiter)
                raise
            finally:
                metrics.REQUESTS_WAITING.dec()
        metrics.GENERATIONS_RUNNING.inc()
        try:
            yield
        finally:
            self._release()
            metrics.GENERATIONS_RUNNING.dec()


class _TokenTimes:
    """When the streamed answer's tokens arrived: its mean time per output token, observed once.
    A delta may carry several tokens that arrived together; the time from the first delta to the
    last is spread over the tokens that came after the first delta."""

    def __init__(self) -> None:
        self.first = self.last = 0.0
        self.started = False
        self.later_tokens = 0

    def tick(self, tokens: int = 1) -> None:
        self.last = time.perf_counter()
        if self.started:
            self.later_tokens += tokens
        else:
            self.started = True
            self.first = self.last

    def observe(self) -> None:
        if self.later_tokens:
            metrics.TIME_PER_OUTPUT_TOKEN.observe((self.last - self.first) / self.later_tokens)


@dataclass
class _Usage:
    """Token counts over every backend call one request makes (map steps included)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason = "stop"
    last_prompt: str = ""
    # time.monotonic() after which generation stops (the request's max_time).
    deadline: float = float("inf")
    # What keeps this request's backend calls on one inference replica (routing.affinity_key).
    affinity_key: str = ""


class _MapStep:
    """The map step of a Summarize or Extract, run as a task: `progress()` yields its `Progress`
    (a call ended, or a keepalive while none does) until it ends, then `answers` holds its
    answers; its failure is raised from `progress()`."""

    def __init__(
        self,
        action: str,
        run: Callable[[mapreduce.ProgressReport], Awaitable[list[str]]],
        keepalive_seconds: float,
    ) -> None:
        self.action = action
        self.answers: list[str] = []
        self._run = run
        self._keepalive_seconds = keepalive_seconds

    async def progress(self) -> AsyncGenerator[Progress, None]:
        action = self.action
        updates: asyncio.Queue[Progress] = asyncio.Queue()
        task = asyncio.ensure_future(
            self._run(lambda done, total: updates.put_nowait(Progress(action, done, total)))
        )
        latest = Progress(action, 0, 0)
        getter: asyncio.Future[Progress] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(updates.get())
                finished, _ = await asyncio.wait(
                    {task, getter}, timeout=self._keepalive_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in finished:
                    latest = getter.result()
                    yield latest
                    continue
                getter.cancel()
                if task in finished:
                    break
                yield latest  # nothing ended for a while: say so anyway
            self.answers = task.result()
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class Core:
    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        documents: DocumentStore | None,
        embedder: Embedder | None = None,
        logins: LoginRegistry | None = None,
    ) -> None:
        self.settings = settings
        # Open-access registrations, shared by both front doors (Weaviate's when there is a store).
        self.logins: LoginRegistry = logins if logins is not None else MemoryLogins()
        self.backend = backend
        self.documents = documents
        self._embedder = embedder
        self._embedder_lock = asyncio.Lock()
        # Until the server's start-up settles it (h2ogpt_api.concurrency): --max_concurrency or none.
        self.admission = AdmissionGate(settings.max_concurrency, settings.max_queue)
        # Per-key limits, one counter for the process: a key or login that calls both front doors of
        # one process (OpenAI and Gradio) spends one budget.
        self.limits = RateLimits(settings.requests_per_minute, settings.tokens_per_minute)

    # -- listing -----------------------------------------------------------------------------

    @property
    def prompt_type(self) -> str:
        """The template used for plain-generate calls; '' means the backend's chat template."""
        if self.settings.prompt_type:
            return self.settings.prompt_type
        return "" if self.backend.supports_chat else "chatml"

    def model_names(self) -> list[dict[str, Any]]:
        return [
            {
                "base_model": self.settings.base_model,
                "display_name": self.settings.base_model,
                "max_seq_len": self.settings.max_seq_len,
                "prompt_type": self.prompt_type,
                "inference_server": self.backend.kind,
                "llm": True,
                "rag": bool(self.settings.document_modes) and self.documents is not None,
            }
        ]

    # -- embeddings --------------------------------------------------------------------------

    async def embedder(self) -> Embedder:
        async with self._embedder_lock:
            if self._embedder is None:
                try:
                    from h2ogpt_api.retrieval.embeddings import load_embedder  # noqa: PLC0415
                except ImportError as exc:
                    raise EmbeddingsUnavailableError(
                        f"embeddings are not available on this server: {exc}"
                    ) from None
                self._embedder = await asyncio.to_thread(
                    functools.partial(
                        load_embedder, self.settings.embedding_server, model=self.settings.hf_embedding_model
                    )
                )
            return self._embedder

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await (await self.embedder()).embed(texts)

    # -- generation --------------------------------------------------------------------------

    async def complete(
        self, params: GenerationParams, identity: Identity, options: OutputOptions = NO_OUTPUT_OPTIONS
    ) -> GenerationResult:
        async with contextlib.aclosing(self.stream(params, identity, options)) as events:
            async for event in events:
                if isinstance(event, Completed):
                    return event.result
        raise RuntimeError("generation ended without a result")  # stream() always completes or raises

    async def stream(
        self,
        params: GenerationParams,
        identity: Identity,
        options: OutputOptions = NO_OUTPUT_OPTIONS,
        *,
        session: str | None = None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """The request's events. `session` (a client's X-Session-ID; else the one the OpenAI door
        put in routing.SESSION_ID) keeps a conversation on one inference replica."""
        params = with_server_settings(params, self.settings)
        mode = self._checked_mode(params)
        self._check_options(params, options)
        async with self.admission.slot():
            started = time.perf_counter()
            usage = _Usage(
                deadline=time.monotonic() + params.max_time,
                affinity_key=routing.affinity_key(
                    session or routing.SESSION_ID.get(), identity.username, identity.authenticated
                ),
            )
            token_times = _TokenTimes()
            pieces: list[str] = []
            calls: list[ToolCallDelta] = []
            logprobs: list[TokenLogprob] = []
            hits: list[Hit] = []
            if params.langchain_action == "Query":
                hits, user_text = await self._query_text(params, identity, mode)
                async with contextlib.aclosing(self._generate(user_text, params, usage, options)) as deltas:
                    async for delta in deltas:
                        if isinstance(delta, ToolCallDelta):
                            calls.append(delta)
                        elif isinstance(delta, Held):
                            pass  # passed on as it is: a keepalive, not output
                        else:
                            token_times.tick(delta.tokens)
                            pieces.append(delta.text)
                            logprobs.extend(delta.logprobs)
                        yield delta
            elif params.langchain_action == "Summarize":
                hits = await self._parts(params, identity, mode)
                summaries = _MapStep(
                    "Summarize",
                    lambda report: mapreduce.map_summaries(
                        [hit.content for hit in hits],
                        lambda text: prompts.summary_prompt(
                            text, params.question, params.pre_prompt_summary, params.prompt_summary
                        ),
                        lambda text: self._generate_text(text, params, usage),
                        self._map_parallelism(),
                        self._context_chars(params),
                        report=report,
                    ),
                    self.settings.keepalive_seconds,
                )
                async with contextlib.aclosing(summaries.progress()) as progress:
                    async for update in progress:
                        yield update
                final = prompts.summary_prompt(
                    "\n\n".join(summaries.answers),
                    params.question,
                    params.pre_prompt_summary,
                    params.prompt_summary,
                )
                async with contextlib.aclosing(self._generate(final, params, usage)) as deltas:
                    async for delta in deltas:
                        if isinstance(delta, TextDelta):
                            token_times.tick(delta.tokens)
                            pieces.append(delta.text)
                            yield delta
            else:  # Extract
                hits = await self._parts(params, identity, mode)
                extracted = _MapStep(
                    "Extract",
                    lambda report: mapreduce.extract(
                        [hit.content for hit in hits],
                        lambda text: prompts.extraction_prompt(
                            text, params.question, params.pre_prompt_extraction, params.prompt_extraction
                        ),
                        lambda text: self._generate_text(text, params, usage),
                        self._map_parallelism(),
                        report=report,
                    ),
                    self.settings.keepalive_seconds,
                )
                async with contextlib.aclosing(extracted.progress()) as progress:
                    async for update in progress:
                        yield update
                pieces.append(str(extracted.answers))
                yield TextDelta(pieces[-1])
            elapsed = time.perf_counter() - started
            token_times.observe()
            yield Completed(
                GenerationResult(
                    response="".join(pieces),
                    sources=hits,
                    prompt=usage.last_prompt,
                    base_model=self.settings.base_model,
                    num_prompt_tokens=usage.prompt_tokens,
                    ntokens=usage.completion_tokens,
                    t_generate=elapsed,
                    tokens_persecond=usage.completion_tokens / elapsed if elapsed > 0 else 0.0,
                    finish_reason=usage.finish_reason,
                    tool_calls=assemble_tool_calls(calls),
                    logprobs=tuple(logprobs),
                )
            )

    def _check_options(self, params: GenerationParams, options: OutputOptions) -> None:
        """A 400 naming the first OpenAI output option this request's backend route cannot honour."""
        requested = options.requested()
        if not requested:
            return
        if params.langchain_action != "Query":
            raise InvalidRequestError(
                f"{requested[0]} works with langchain_action 'Query' only, not "
                f"{params.langchain_action!r} (its answer is built from several model calls)",
                param=requested[0],
            )
        chat = not (params.prompt_type or self.prompt_type)
        unsupported = self.backend.unsupported_option(options, chat=chat)
        if unsupported is not None:
            route = "" if chat else f" with prompt_type {(params.prompt_type or self.prompt_type)!r}"
            raise InvalidRequestError(
                f"{unsupported} is not supported by this server's {self.backend.kind} backend{route}; "
                "see docs/openai-api.md for the parameter support matrix",
                param=unsupported,
            )

    def _checked_mode(self, params: GenerationParams) -> str:
        mode = params.langchain_mode or self.settings.langchain_mode
        if mode not in self.settings.langchain_modes and mode not in NO_DOCUMENT_MODES:
            raise InvalidRequestError(
                f"langchain_mode {mode!r} is not offered by this server; choose one of "
                f"{self.settings.langchain_modes}",
                param="langchain_mode",
            )
        if params.min_new_tokens > 1 and not self.backend.supports_min_new_tokens:
            raise InvalidRequestError(
                f"min_new_tokens={params.min_new_tokens}: the {self.backend.kind} backend cannot force a "
                "minimum answer length; send 0 or 1",
                param="min_new_tokens",
            )
        if params.prompt_type:
            try:
                prompts.template_for(params.prompt_type)
            except prompts.UnknownPromptTypeError as exc:
                raise InvalidRequestError(str(exc), param="prompt_type") from None
        return mode

    def _map_parallelism(self) -> int:
        return self.settings.num_async if self.settings.async_output else 1

    def _context_chars(self, params: GenerationParams) -> int:
        """Room for document text in one prompt: the context length less the answer, in characters."""
        tokens = self.settings.max_seq_len - min(params.max_new_tokens, self.settings.max_seq_len // 2) - 64
        return max(256, tokens * CHARS_PER_TOKEN)

    def _store(self, mode: str) -> DocumentStore:
        if self.documents is None:
            raise InvalidRequestError(
                f"langchain_mode {mode!r} needs a document store, and this server runs without one "
                "(pass text_context_list, or use langchain_mode='LLM')",
                param="langchain_mode",
            )
        return self.documents

    async def _query_text(
        self, params: GenerationParams, identity: Identity, mode: str
    ) -> tuple[list[Hit], str]:
        """The user message for a Query and the hits it was grounded on."""
        if params.text_context_list:
            hits = [
                Hit(content=text, source=TEXT_CONTEXT_SOURCE, chunk_id=index)
                for index, text in enumerate(params.text_context_list)
            ]
        elif mode in NO_DOCUMENT_MODES:
            return [], params.question
        else:
            k = params.top_k_docs if params.top_k_docs > 0 else 100
            try:
                hits = await self._store(mode).search(
                    params.instruction,
                    collection=mode,
                    identity=identity,
                    k=k,
                    document_choice=params.documents_chosen,
                )
            except DocumentError as exc:
                raise InvalidRequestError(str(exc), param="langchain_mode") from None
            if not hits:
                return [], params.question
        context = prompts.join_context([hit.content for hit in hits], self._context_chars(params))
        text = prompts.query_prompt(params.question, context, params.pre_prompt_query, params.prompt_query)
        return hits, text

    async def _parts(self, params: GenerationParams, identity: Identity, mode: str) -> list[Hit]:
        if params.text_context_list:
            return [
                Hit(content=text, source=TEXT_CONTEXT_SOURCE, chunk_id=index)
                for index, text in enumerate(params.text_context_list)
            ]
        if mode in NO_DOCUMENT_MODES:
            raise InvalidRequestError(
                f"{params.langchain_action} needs documents: "
                "give text_context_list or a document langchain_mode",
                param="langchain_action",
            )
        try:
            hits = await self._store(mode).parts(
                collection=mode,
                identity=identity,
                k=params.top_k_docs,
                document_choice=params.documents_chosen,
                query=params.instruction or None,
            )
        except DocumentError as exc:
            raise InvalidRequestError(str(exc), param="langchain_mode") from None
        if not hits:
            raise InvalidRequestError(
                f"collection {mode!r} has no documents to {params.langchain_action.lower()}",
                param="langchain_mode",
            )
        return hits

    def _backend_request(
        self, user_text: str, params: GenerationParams, options: OutputOptions = NO_OUTPUT_OPTIONS
    ) -> tuple[BackendRequest, str]:
        """The backend call for one user message, and the prompt text to report as `prompt_raw`."""
        system_prompt = self.settings.system_prompt if params.system_prompt is None else params.system_prompt
        if system_prompt in AUTO_SYSTEM_PROMPTS:
            system_prompt = self.backend.default_system_prompt
        history = params.chat_conversation if params.add_chat_history_to_context else []
        messages = tuple(prompts.conversation(system_prompt, history, user_text))
        prompt_type = params.prompt_type or self.prompt_type
        sampling = Sampling(
            max_new_tokens=min(params.max_new_tokens, self.settings.max_seq_len),
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            repetition_penalty=params.repetition_penalty,
            seed=params.seed,
            greedy=params.sampling_is_greedy,
            stop=tuple(params.stop),
            min_new_tokens=params.min_new_tokens if params.min_new_tokens > 1 else 0,
        )
        if not prompt_type:
            # The backend applies the model's chat template; ChatML shows what was sent.
            return (
                BackendRequest(messages=messages, sampling=sampling, options=options),
                prompts.render(messages, "chatml"),
            )
        prompt = prompts.render(messages, prompt_type)
        template_stops = tuple(s for s in prompts.stop_sequences(prompt_type) if s not in sampling.stop)
        sampling = dataclasses.replace(sampling, stop=sampling.stop + template_stops)
        return BackendRequest(messages=messages, sampling=sampling, prompt=prompt, options=options), prompt

    async def _generate(
        self,
        user_text: str,
        params: GenerationParams,
        usage: _Usage,
        options: OutputOptions = NO_OUTPUT_OPTIONS,
    ) -> AsyncGenerator[TextDelta | ToolCallDelta | Held, None]:
        request, prompt_raw = self._backend_request(user_text, params, options)
        request = dataclasses.replace(request, affinity_key=usage.affinity_key)
        usage.last_prompt = prompt_raw
        try:
            async with contextlib.aclosing(self.backend.stream(request)) as events:
                deltas = 0
                async for event in events:
                    if isinstance(event, StreamEnd):
                        usage.prompt_tokens += event.prompt_tokens
                        usage.completion_tokens += event.completion_tokens
                        usage.finish_reason = event.finish_reason
                        continue
                    yield event
                    if isinstance(event, Held):
                        continue
                    deltas += 1
                    if time.monotonic() > usage.deadline:
                        # h2oGPT's max_time: the answer ends here, with what it has (closing the
                        # stream cancels the upstream generation). Tokens are counted as the
                        # pieces received, which backends stream one token at a time.
                        usage.completion_tokens += deltas
                        usage.finish_reason = "length"
                        return
        except BackendError as exc:
            metrics.BACKEND_ERRORS.labels(backend=self.backend.kind, kind=exc.kind).inc()
            raise

    async def _generate_text(self, user_text: str, params: GenerationParams, usage: _Usage) -> str:
        async with contextlib.aclosing(self._generate(user_text, params, usage)) as deltas:
            return "".join([delta.text async for delta in deltas if isinstance(delta, TextDelta)])
