"""What the Gradio side can do, as typed calls over the `Core`: who is asking, generation, model
listing, documents. The UI (`ui.py`) and h2oGPT's api_names (`endpoints.py`) both call this; only
the api_names speak h2oGPT's `str(dict)` wire format.

Who is asking: a Gradio login when the server has users or closed access; otherwise an anonymous
session, whose personal collection (MyData) is scoped to its Gradio session, as h2oGPT scopes it.
Callers without a session (the REST route) are the guest.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from h2ogpt_api import routing
from h2ogpt_api.auth import ANONYMOUS, KEY_IDENTITY_PREFIX, Authenticator, AuthError
from h2ogpt_api.core import Core, GenerationEvent, GenerationResult, InvalidRequestError
from h2ogpt_api.errors import as_api_error
from h2ogpt_api.params import GenerationParams
from h2ogpt_api.retrieval.base import AddResult, DocumentStore, Hit, Identity
from h2ogpt_api.settings import NO_DOCUMENT_MODES, Settings


@dataclass(frozen=True)
class Collection:
    """A document collection a request named, checked once: the store and the collection's name."""

    store: DocumentStore
    name: str


@dataclass(frozen=True)
class Caller:
    """The Gradio facts about who is asking: the login name, if any, and the browser session."""

    username: str | None = None
    session: str | None = None

    @classmethod
    def of(cls, request: gr.Request | None) -> Caller:
        if request is None:
            return cls()
        username = getattr(request, "username", None)
        session = getattr(request, "session_hash", None)
        return cls(str(username) if username else None, str(session) if session else None)


def session_header(request: gr.Request | None) -> str | None:
    """The client's X-Session-ID header (routing affinity); None without one or without headers."""
    try:
        headers = request.headers if request is not None else None
    except AttributeError:  # a gr.Request made without an HTTP request (the REST route's)
        return None
    value = headers.get(routing.SESSION_HEADER) if headers is not None else None
    return str(value)[: routing.SESSION_ID_MAX_CHARS] if value else None


def failure_message(exc: BaseException) -> str:
    """What a person or h2oGPT client is told when a call fails (the OpenAI error's message)."""
    return as_api_error(exc).message


def failure_status(exc: BaseException) -> str:
    return str(as_api_error(exc).status)


class GradioService:
    """The Gradio side's operations, holding the core, the settings and the authenticator."""

    def __init__(self, core: Core, settings: Settings) -> None:
        self.core = core
        self.settings = settings
        self.auth = Authenticator(settings, core.logins)
        self.upload_dir = Path(gr.utils.get_upload_folder()).resolve()

    # -- who is asking ---------------------------------------------------------------------------

    @property
    def login_required(self) -> bool:
        """Gradio's login page is on when users are configured or access is closed."""
        return self.settings.auth_access == "closed" or bool(self.settings.auth.strip())

    async def check_login(self, username: str, password: str) -> bool:
        """Gradio's `auth` callable: known users, or (open access) a new name registers."""
        if not username or ":" in username:
            return False
        try:
            await self.auth.identify(f"{username}:{password}")
        except AuthError:
            return False
        return True

    def identity(self, caller: Caller, key: str | None, *, check_key: bool = True) -> Identity:
        """A Gradio login, else the user a named API key carries, else an anonymous session (its
        MyData is its own scratch space, h2oGPT's behaviour, deleted after --anonymous_mydata_ttl),
        else (no session: the REST route) anonymous, without MyData."""
        entry = self.auth.check_key(None, key) if check_key else None
        if caller.username:
            return Identity(username=caller.username, authenticated=True)
        if entry is not None and entry.names_user:
            return Identity(username=KEY_IDENTITY_PREFIX + entry.name, authenticated=True)
        if self.settings.auth_access == "closed":
            raise AuthError("access is closed on this server: log in first")
        if caller.session:
            return Identity(username=self.auth.reserved_prefix + caller.session)
        return ANONYMOUS

    # -- per-key limits --------------------------------------------------------------------------

    def admit(self, caller: Caller, key: str | None) -> str | None:
        """Count one call against the per-key limits (RateLimitedError over one) and return the
        subject its tokens are charged to: the key's name, else the login, as on the OpenAI side
        and in the same counter, so one key has one budget across both front doors of a process.
        Anonymous sessions are not limited (None): nothing ties two of them to one person, and one
        shared budget would let a single visitor lock out every other."""
        limits = self.core.limits
        if not limits.enabled:
            return None
        entry = self.auth.check_key(None, key) if key else None
        if entry is not None:
            subject = f"key:{entry.name}"
        elif caller.username:
            subject = f"user:{caller.username}"
        else:
            return None
        limits.admit(subject)
        return subject

    def charge(self, subject: str | None, result: GenerationResult) -> None:
        """Count a finished generation's tokens for the subject `admit` returned."""
        if subject is not None:
            self.core.limits.charge(subject, result.num_prompt_tokens + result.ntokens)

    # -- generation ------------------------------------------------------------------------------

    def stream(
        self, params: GenerationParams, identity: Identity, session: str | None = None
    ) -> AsyncGenerator[GenerationEvent, None]:
        return self.core.stream(params, identity, session=session)

    def model_names(self, caller: Caller) -> list[dict[str, Any]]:
        """The served models (refused when access is closed and nobody logged in, as h2oGPT does)."""
        self.identity(caller, None, check_key=False)
        return self.core.model_names()

    # -- documents -------------------------------------------------------------------------------

    def collection(self, mode: object) -> Collection:
        """The collection a `langchain_mode` names, or a 400 saying why not. Checked once per
        request: the calls below take its answer."""
        if not isinstance(mode, str) or not mode:
            raise InvalidRequestError(
                "langchain_mode must name a collection, e.g. 'MyData'", param="langchain_mode"
            )
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
        return Collection(self.core.documents, mode)

    async def add_texts(
        self, texts: list[str], collection: Collection, identity: Identity, chunk_size: int
    ) -> list[AddResult]:
        return [
            await collection.store.add_text(
                text, collection=collection.name, identity=identity, chunk_size=chunk_size
            )
            for text in texts
        ]

    async def add_urls(
        self, urls: list[str], collection: Collection, identity: Identity, chunk_size: int
    ) -> list[AddResult]:
        return [
            await collection.store.add_url(
                url, collection=collection.name, identity=identity, chunk_size=chunk_size
            )
            for url in urls
        ]

    async def add_uploaded_files(
        self, paths: list[str], collection: Collection, identity: Identity, chunk_size: int
    ) -> list[AddResult]:
        return [
            await collection.store.add_file(
                str(self.uploaded_path(path)),
                collection=collection.name,
                identity=identity,
                chunk_size=chunk_size,
                source=Path(path).name,
            )
            for path in paths
        ]

    def uploaded_path(self, path: str) -> Path:
        """Only files uploaded through Gradio may be ingested: never an arbitrary server path."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.upload_dir):
            raise InvalidRequestError(
                f"{Path(path).name}: not an uploaded file; upload it with /upload_api first "
                "and pass the server path it returns"
            )
        return resolved

    async def list_sources(self, collection: Collection, identity: Identity) -> list[str]:
        return await collection.store.list_sources(collection=collection.name, identity=identity)

    async def delete_sources(self, names: list[str], collection: Collection, identity: Identity) -> list[str]:
        """Delete the named sources (`All` for every one); the sources left."""
        return await collection.store.delete_sources(names, collection=collection.name, identity=identity)

    async def document_chunks(self, source: str, collection: Collection, identity: Identity) -> list[Hit]:
        if not source:
            raise InvalidRequestError("the document name must be a non-empty string")
        hits = await collection.store.get_document(source, collection=collection.name, identity=identity)
        if not hits:
            raise InvalidRequestError(f"no document named {source!r} in {collection.name}")
        return hits
