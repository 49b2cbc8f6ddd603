"""The `GradioClient` class. Every call is one or more h2oGPT api_names over `gradio_client`.

Content given to `query` / `summarize` / `extract` (`text`, `file`, `url`) is added to the
collection first, and the answer is then limited to that content (`document_choice`) unless the
caller chose documents; without content the whole collection is used.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gradio_client import Client, handle_file

DEFAULT_LANGCHAIN_MODE = "MyData"
DEFAULT_TOP_K_DOCS = 10
# h2oGPT's client defaults: deterministic answers with room to finish.
DEFAULT_GENERATION = {"max_new_tokens": 1024, "temperature": 0.0, "max_time": 360}
POLL_INTERVAL_S = 0.01

ContentArg = str | Sequence[str] | None


class H2oGPTClientError(RuntimeError):
    """The server answered with an error; the message is the server's."""


def _as_list(value: ContentArg) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def parse_answer(text: str) -> dict[str, Any]:
    """One `/submit_nochat_api` output, a `str()` of a dict; raises on the server's `error`."""
    try:
        answer = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise H2oGPTClientError(f"the server's answer is not a dict literal: {text[:200]!r}") from exc
    if not isinstance(answer, dict):
        raise H2oGPTClientError(f"the server's answer is not a dict: {text[:200]!r}")
    if answer.get("error"):
        raise H2oGPTClientError(str(answer["error"]))
    return answer


class GradioClient:
    """h2oGPT's client wrapper: `GradioClient(url, h2ogpt_key=None, auth=None)`.

    `auth=(user, password)` logs in (needed for personal collections when the server has users,
    and for any call when its access is closed). `h2ogpt_key` is sent with every call.
    Other keyword arguments go to `gradio_client.Client`. `persist=True` (h2oGPT's meaning) keeps
    the conversation: each question, query, summary or extraction is sent with the earlier
    (question, answer) pairs as `chat_conversation`, and `clear_conversation()` starts afresh;
    with `persist=False` (h2oGPT's default) every call stands alone. Either way this client keeps
    one session, so an anonymous user's MyData lasts as long as the client (the server deletes it
    `--anonymous_mydata_ttl` after its last addition, a day by default).
    """

    def __init__(
        self,
        src: str,
        h2ogpt_key: str | None = None,
        auth: tuple[str, str] | None = None,
        *,
        persist: bool = False,
        verbose: bool = False,
        **client_kwargs: Any,
    ) -> None:
        self.src = src
        self.h2ogpt_key = h2ogpt_key
        self.persist = persist
        # (question, answer) pairs so far, sent with each call when `persist`.
        self.chat_conversation: list[tuple[str, str]] = []
        # The whole answer dict (response, sources, save_dict, ...) of the latest generation.
        self.last_answer: dict[str, Any] | None = None
        client_kwargs.setdefault("analytics_enabled", False)
        self.client = Client(src, auth=auth, verbose=verbose, **client_kwargs)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> GradioClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- models ----------------------------------------------------------------------------------

    def get_models_full(self) -> list[dict[str, Any]]:
        text = self.client.predict(api_name="/model_names")
        models = ast.literal_eval(text)
        if isinstance(models, dict):
            raise H2oGPTClientError(str(models.get("error")))
        return list(models)

    def list_models(self) -> list[str]:
        return [str(model["display_name"]) for model in self.get_models_full()]

    # -- documents -------------------------------------------------------------------------------

    def _document_options(self, langchain_mode: str, chunk_size: int) -> list[Any]:
        # langchain_mode, chunk, chunk_size, embed, six loader options (server defaults), key
        return [langchain_mode, True, chunk_size, True, None, None, None, None, None, None, self.h2ogpt_key]

    def _added(self, result: Sequence[Any]) -> str:
        """The source name an add call stored under, or the server's error."""
        if result[3]:
            raise H2oGPTClientError(str(result[3]))
        return str(result[4])

    def add_text(self, text: str, langchain_mode: str = DEFAULT_LANGCHAIN_MODE, chunk_size: int = 512) -> str:
        options = self._document_options(langchain_mode, chunk_size)
        result = self.client.predict(text, *options, api_name="/add_text")
        return self._added(result)

    def add_url(self, url: str, langchain_mode: str = DEFAULT_LANGCHAIN_MODE, chunk_size: int = 512) -> str:
        options = self._document_options(langchain_mode, chunk_size)
        result = self.client.predict(url, *options, api_name="/add_url")
        return self._added(result)

    def add_file(
        self, path: str | Path, langchain_mode: str = DEFAULT_LANGCHAIN_MODE, chunk_size: int = 512
    ) -> str:
        _, server_path = self.client.predict(handle_file(str(path)), api_name="/upload_api")
        result = self.client.predict(
            server_path, *self._document_options(langchain_mode, chunk_size), api_name="/add_file_api"
        )
        return self._added(result)

    def get_sources(self, langchain_mode: str = DEFAULT_LANGCHAIN_MODE) -> list[str]:
        listed = ast.literal_eval(
            self.client.predict(langchain_mode, self.h2ogpt_key, api_name="/get_sources_api")
        )
        if isinstance(listed, dict):
            raise H2oGPTClientError(str(listed.get("error")))
        return list(listed)

    def delete_sources(
        self, sources: Sequence[str], langchain_mode: str = DEFAULT_LANGCHAIN_MODE
    ) -> list[str]:
        left = ast.literal_eval(
            self.client.predict(list(sources), langchain_mode, self.h2ogpt_key, api_name="/delete_sources")
        )
        if isinstance(left, dict):
            raise H2oGPTClientError(str(left.get("error")))
        return list(left)

    def _add_content(
        self, text: ContentArg, file: ContentArg, url: ContentArg, langchain_mode: str
    ) -> list[str]:
        sources = [self.add_text(item, langchain_mode) for item in _as_list(text)]
        sources += [self.add_file(item, langchain_mode) for item in _as_list(file)]
        sources += [self.add_url(item, langchain_mode) for item in _as_list(url)]
        return sources

    # -- generation ------------------------------------------------------------------------------

    def _request(
        self,
        action: str,
        instruction: str,
        *,
        text: ContentArg,
        file: ContentArg,
        url: ContentArg,
        langchain_mode: str,
        top_k_docs: int,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """The parameter dict for one generation, after adding the given content."""
        added = self._add_content(text, file, url, langchain_mode)
        kwargs: dict[str, Any] = {
            **DEFAULT_GENERATION,
            "instruction": instruction,
            "langchain_mode": langchain_mode,
            "langchain_action": action,
            "top_k_docs": top_k_docs,
            "h2ogpt_key": self.h2ogpt_key,
        }
        if added and "document_choice" not in extra:
            kwargs["document_choice"] = added
        kwargs.update(extra)
        return kwargs

    def clear_conversation(self) -> None:
        """Forget the conversation kept with `persist=True`."""
        self.chat_conversation = []

    def _with_history(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if not self.persist or "chat_conversation" in kwargs:
            return kwargs
        return {**kwargs, "chat_conversation": list(self.chat_conversation)}

    def _remember(self, kwargs: dict[str, Any], answer: dict[str, Any]) -> None:
        if self.persist:
            turn = (str(kwargs.get("instruction", "")), str(answer.get("response", "")))
            self.chat_conversation.append(turn)

    def _complete(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = self._with_history(kwargs)
        text = self.client.predict(str({**kwargs, "stream_output": False}), api_name="/submit_nochat_api")
        self.last_answer = parse_answer(text)
        self._remember(kwargs, self.last_answer)
        return self.last_answer

    def _stream(self, kwargs: dict[str, Any]) -> Iterator[str]:
        """New text as the server streams it; the final answer is checked for an error."""
        kwargs = self._with_history(kwargs)
        job = self.client.submit(str({**kwargs, "stream_output": True}), api_name="/submit_nochat_api")
        sent = ""
        seen = 0
        while True:
            done = job.done()
            outputs = job.outputs()
            for output in outputs[seen:]:
                answer = parse_answer(output)
                self.last_answer = answer
                text = str(answer.get("response", ""))
                if text.startswith(sent) and len(text) > len(sent):
                    yield text[len(sent) :]
                    sent = text
            seen = len(outputs)
            if done:
                break
            time.sleep(POLL_INTERVAL_S)
        job.result()  # raises what the job raised, if anything
        if self.last_answer is not None:
            self._remember(kwargs, self.last_answer)

    def question(self, instruction: str, **kwargs: Any) -> str:
        """Ask the LLM alone (no documents)."""
        request = {**DEFAULT_GENERATION, "instruction": instruction, "langchain_mode": "LLM",
                   "langchain_action": "Query", "h2ogpt_key": self.h2ogpt_key, **kwargs}
        return str(self._complete(request)["response"])

    def question_stream(self, instruction: str, **kwargs: Any) -> Iterator[str]:
        request = {**DEFAULT_GENERATION, "instruction": instruction, "langchain_mode": "LLM",
                   "langchain_action": "Query", "h2ogpt_key": self.h2ogpt_key, **kwargs}
        return self._stream(request)

    def query_full(  # noqa: PLR0917 (h2oGPT's signature)
        self,
        query: str,
        text: ContentArg = None,
        file: ContentArg = None,
        url: ContentArg = None,
        langchain_mode: str = DEFAULT_LANGCHAIN_MODE,
        top_k_docs: int = DEFAULT_TOP_K_DOCS,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Like `query`, returning h2oGPT's whole answer dict (`response`, `sources`, `save_dict`, ...)."""
        return self._complete(
            self._request("Query", query, text=text, file=file, url=url, langchain_mode=langchain_mode,
                          top_k_docs=top_k_docs, extra=kwargs)
        )

    def query(  # noqa: PLR0917 (h2oGPT's signature)
        self,
        query: str,
        text: ContentArg = None,
        file: ContentArg = None,
        url: ContentArg = None,
        langchain_mode: str = DEFAULT_LANGCHAIN_MODE,
        top_k_docs: int = DEFAULT_TOP_K_DOCS,
        **kwargs: Any,
    ) -> str:
        """Answer `query` from documents: the given `text` / `file` / `url`, or the collection."""
        answer = self.query_full(query, text, file, url, langchain_mode, top_k_docs, **kwargs)
        return str(answer["response"])

    def query_stream(  # noqa: PLR0917 (h2oGPT's signature)
        self,
        query: str,
        text: ContentArg = None,
        file: ContentArg = None,
        url: ContentArg = None,
        langchain_mode: str = DEFAULT_LANGCHAIN_MODE,
        top_k_docs: int = DEFAULT_TOP_K_DOCS,
        **kwargs: Any,
    ) -> Iterator[str]:
        return self._stream(
            self._request("Query", query, text=text, file=file, url=url, langchain_mode=langchain_mode,
                          top_k_docs=top_k_docs, extra=kwargs)
        )

    def _summary_request(  # noqa: PLR0917 (h2oGPT's signature)
        self, query: str | None, focus: str | None, text: ContentArg, file: ContentArg, url: ContentArg,
        langchain_mode: str, top_k_docs: int, kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        # h2oGPT's meaning: `query` is the summary instruction; `focus` (if any) picks the
        # most relevant parts instead of the first ones.
        extra = {**kwargs}
        if query:
            extra.setdefault("prompt_summary", query)
        return self._request("Summarize", focus or "", text=text, file=file, url=url,
                             langchain_mode=langchain_mode, top_k_docs=top_k_docs, extra=extra)

    def summarize(  # noqa: PLR0917 (h2oGPT's signature)
        self,
        query: str | None = None,
        focus: str | None = None,
        text: ContentArg = None,
        file: ContentArg = None,
        url: ContentArg = None,
        langchain_mode: str = DEFAULT_LANGCHAIN_MODE,
        top_k_docs: int = DEFAULT_TOP_K_DOCS,
        **kwargs: Any,
    ) -> str:
        """Map-reduce summary of the document parts (`top_k_docs` of them; -1 for all)."""
        request = self._summary_request(query, focus, text, file, url, langchain_mode, top_k_docs, kwargs)
        return str(self._complete(request)["response"])

    def summarize_stream(  # noqa: PLR0917 (h2oGPT's signature)
        self,
        query: str | None = None,
        focus: str | None = None,
        text: ContentArg = None,
        file: ContentArg = None,
        url: ContentArg = None,
        langchain_mode: str = DEFAULT_LANGCHAIN_MODE,
        top_k_docs: int = DEFAULT_TOP_K_DOCS,
        **kwargs: Any,
    ) -> Iterator[str]:
        request = self._summary_request(query, focus, text, file, url, langchain_mode, top_k_docs, kwargs)
        return self._stream(request)

    def _extract_request(  # noqa: PLR0917 (h2oGPT's signature)
        self, query: str | None, focus: str | None, text: ContentArg, file: ContentArg, url: ContentArg,
        langchain_mode: str, top_k_docs: int, kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        extra = {**kwargs}
        if query:
            extra.setdefault("prompt_extraction", query)
        return self._request("Extract", focus or "", text=text, file=file, url=url,
                             langchain_mode=langchain_mode, top_k_docs=top_k_docs, extra=extra)

    def extract(  # noqa: PLR0917 (h2oGPT's signature)
        self,
        query: str | None = None,
        focus: str | None = None,
        text: ContentArg = None,
        file: ContentArg = None,
        url: ContentArg = None,
        langchain_mode: str = DEFAULT_LANGCHAIN_MODE,
        top_k_docs: int = DEFAULT_TOP_K_DOCS,
        **kwargs: Any,
    ) -> list[str]:
        """One answer per document part (a map, no reduce)."""
        request = self._extract_request(query, focus, text, file, url, langchain_mode, top_k_docs, kwargs)
        response = self._complete(request)["response"]
        answers = ast.literal_eval(response) if isinstance(response, str) else response
        if not isinstance(answers, list):
            raise H2oGPTClientError(f"Extract answered {type(answers).__name__}, not a list")
        return [str(answer) for answer in answers]

    def extract_stream(  # noqa: PLR0917 (h2oGPT's signature)
        self,
        query: str | None = None,
        focus: str | None = None,
        text: ContentArg = None,
        file: ContentArg = None,
        url: ContentArg = None,
        langchain_mode: str = DEFAULT_LANGCHAIN_MODE,
        top_k_docs: int = DEFAULT_TOP_K_DOCS,
        **kwargs: Any,
    ) -> Iterator[str]:
        """Extract's answer arrives whole (the str() of the list) once every part is done."""
        request = self._extract_request(query, focus, text, file, url, langchain_mode, top_k_docs, kwargs)
        return self._stream(request)
