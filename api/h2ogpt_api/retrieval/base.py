"""The contract between the core (generation, map-reduce) and the document store.

The core only ever talks to documents through `DocumentStore`; the Weaviate
implementation lives in `store.py`. Keeping the protocol here lets the core and its
tests stay independent of Weaviate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class DocumentError(ValueError):
    """Bad input for a document operation (unsupported type, empty, too large, unreachable URL).

    The message is shown to the client as is, so it must say what was wrong and how to fix it.
    """


class UnknownCollectionError(DocumentError):
    """A `langchain_mode` that this server does not offer."""


class DocumentStoreUnavailableError(Exception):
    """The store itself failed or cannot be reached (Weaviate down or restarting): not the
    client's fault, and worth a retry. Not a `DocumentError`, which is bad input."""


@dataclass(frozen=True)
class TokenWindow:
    """What an embedding model reads of a text: at most `max_tokens` of `tokenizer`'s tokens,
    special tokens included; the rest is cut off unseen. Chunking measures chunks with it so
    that none is longer than the model reads."""

    tokenizer: Any  # a `tokenizers.Tokenizer` WITHOUT truncation (a truncating one never counts past the cut)
    max_tokens: int

    def count(self, text: str) -> int:
        """Tokens the model would be given for `text`, special tokens ([CLS], [SEP]) included."""
        return len(self.tokenizer.encode(text).ids)


def token_window_of(embedder: object) -> TokenWindow | None:
    """The embedder's `token_window` when it knows its tokenizer (the in-process model), else None
    (a remote endpoint: its tokenizer is not known here, so chunks are measured in characters)."""
    window = getattr(embedder, "token_window", None)
    return window if isinstance(window, TokenWindow) else None


class Embedder(Protocol):
    """Turns texts into vectors. `model_name` and `dimension` are recorded with each collection."""

    model_name: str
    dimension: int

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


@dataclass(frozen=True)
class Identity:
    """Who is asking. `username` scopes personal collections (MyData)."""

    username: str
    authenticated: bool = False


@dataclass(frozen=True)
class Hit:
    """One chunk of a document, as returned by search or listing."""

    content: str
    source: str
    score: float = 0.0
    page: int | None = None
    chunk_id: int = 0
    metadata: dict[str, str | int | float | None] = field(default_factory=dict)

    def as_h2ogpt_source(self, orig_index: int) -> dict[str, object]:
        """The dict shape h2oGPT clients read from `sources`."""
        return {"score": self.score, "content": self.content, "source": self.source, "orig_index": orig_index}


@dataclass(frozen=True)
class AddResult:
    """What an ingestion did: the source name it stored under and how many chunks it added."""

    source: str
    chunks_added: int
    duplicate_chunks_skipped: int = 0


class DocumentStore(Protocol):
    """Collections (`langchain_mode`) of chunked, embedded documents.

    `LLM` is not a collection (no documents). `MyData` is personal: every method scopes it to
    `identity.username`, and the store itself enforces that (one Weaviate tenant per user).
    """

    def collections(self) -> list[str]: ...

    async def add_text(self, text: str, *, collection: str, identity: Identity,
                       source: str | None = None, chunk_size: int = 512) -> AddResult: ...

    async def add_url(self, url: str, *, collection: str, identity: Identity,
                      chunk_size: int = 512) -> AddResult: ...

    async def add_file(self, path: str, *, collection: str, identity: Identity,
                       chunk_size: int = 512, source: str | None = None) -> AddResult: ...

    async def list_sources(self, *, collection: str, identity: Identity) -> list[str]: ...

    async def delete_sources(self, sources: list[str], *, collection: str, identity: Identity) -> list[str]:
        """Delete the named sources (`["All"]` deletes every one); returns the sources left."""
        ...

    async def get_document(self, source: str, *, collection: str, identity: Identity) -> list[Hit]:
        """Every chunk of one source, in document order."""
        ...

    async def search(self, query: str, *, collection: str, identity: Identity, k: int,
                     document_choice: list[str] | None = None) -> list[Hit]:
        """Top `k` chunks by hybrid (keyword + vector) relevance, best first."""
        ...

    async def parts(self, *, collection: str, identity: Identity, k: int,
                    document_choice: list[str] | None = None, query: str | None = None) -> list[Hit]:
        """Document parts for Summarize / Extract: the `k` most relevant to `query` when one is
        given, else the first `k` in document order (`k < 0`: all of them)."""
        ...
