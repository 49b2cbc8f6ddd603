"""The Weaviate document store: collections, per-user tenants, de-duplicated ingestion, hybrid search.

Layout in Weaviate: each `langchain_mode` is one Weaviate collection named `H2ogpt_<mode>`
holding one object per chunk (our own vector, `vectorizer none`). `MyData` is a multi-tenant
collection with one tenant per user, so a query for user B cannot reach user A's chunks: the
tenant is part of every request Weaviate serves. Each collection's description records the
embedding model it was built with; adding to or searching it with another model is refused.

Object UUIDs are derived from (collection, tenant, source, chunk number, content hash), so the
same chunk of the same source is never stored twice, and adding a document again only stores
what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, MetadataQuery, Sort
from weaviate.classes.tenants import Tenant
from weaviate.exceptions import WeaviateBaseError
from weaviate.util import generate_uuid5

from h2ogpt_api.retrieval.base import (
    AddResult,
    DocumentError,
    DocumentStoreUnavailableError,
    Embedder,
    Hit,
    Identity,
    UnknownCollectionError,
    token_window_of,
)
from h2ogpt_api.retrieval.embeddings import load_embedder
from h2ogpt_api.retrieval.ingest import (
    DEFAULT_LIMITS,
    DEFAULT_URL_POLICY,
    Chunk,
    IngestLimits,
    LoadedDocument,
    chunk_document,
    fetch_url,
    load_file,
    load_text,
    validate_chunk_size,
)
from h2ogpt_api.retrieval.logins import WeaviateLogins
from h2ogpt_api.retrieval.url_guard import Resolver, UrlPolicy, resolve_host
from h2ogpt_api.retrieval.weaviate_process import LOOPBACK, WeaviateProcess, refuse_while_restarting

log = logging.getLogger(__name__)

NO_DOCUMENTS_MODE = "LLM"
PERSONAL_MODE = "MyData"
ALL_SOURCES = "All"
COLLECTION_PREFIX = "H2ogpt_"
DEFAULT_GRPC_PORT = 50051
# Rows per Weaviate request when reading or writing many objects.
PAGE_SIZE = 500
# Hybrid search weight of vector similarity against BM25 (Weaviate's own default). Lower values let
# a stop-word-ish keyword hit ("how") outrank a clear semantic match when few chunks are scored,
# because relative-score fusion rescales each result set to [0, 1].
HYBRID_ALPHA = 0.75
MAX_SOURCES_LISTED = 100_000

_COLLECTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_CHUNK_PROPERTIES = ["content", "source", "chunk_id", "page", "kind", "added_at"]


@dataclass(frozen=True)
class WeaviateEndpoint:
    http_host: str
    http_port: int
    http_secure: bool
    grpc_host: str
    grpc_port: int


def parse_weaviate_url(url: str) -> WeaviateEndpoint:
    """`http(s)://host[:port][?grpc_port=N]`: gRPC on the same host, port 50051 unless given."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--weaviate_url {url!r} must look like http://host:8080 (optionally "
                         "?grpc_port=50051)")
    secure = parts.scheme == "https"
    query = parse_qs(parts.query)
    grpc_port = int(query["grpc_port"][0]) if "grpc_port" in query else DEFAULT_GRPC_PORT
    grpc_host = query["grpc_host"][0] if "grpc_host" in query else parts.hostname
    http_port = parts.port or (443 if secure else 80)
    return WeaviateEndpoint(parts.hostname, http_port, secure, grpc_host, grpc_port)


def weaviate_collection_name(mode: str) -> str:
    # Weaviate capitalises a class's first letter; the fixed prefix keeps `docs` and `Docs` apart.
    return f"{COLLECTION_PREFIX}{mode}"


def tenant_name(username: str) -> str:
    """A valid Weaviate tenant name for a user: readable prefix plus a hash, so no two users share one."""
    if not username:
        raise DocumentError(f"{PERSONAL_MODE} is personal and anonymous callers have none: log in "
                            "(user='name:password') or use an API key that names a user")
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", username)[:40]
    digest = hashlib.sha256(username.encode("utf-8")).hexdigest()[:16]
    return f"{readable}-{digest}"


def chunk_uuid(collection: str, tenant: str, chunk: Chunk) -> str:
    return str(generate_uuid5(f"{collection}/{tenant}/{chunk.source}/{chunk.chunk_id}/{chunk.content_hash}"))


def embedding_record(embedder: Embedder) -> str:
    return json.dumps({"h2ogpt_embedding_model": embedder.model_name,
                       "h2ogpt_embedding_dimension": embedder.dimension})


def parse_embedding_record(description: str | None) -> tuple[str, int] | None:
    try:
        record = json.loads(description or "")
        return str(record["h2ogpt_embedding_model"]), int(record["h2ogpt_embedding_dimension"])
    except (ValueError, KeyError, TypeError):
        return None


_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


def store_failures_unavailable(
    method: Callable[_Params, Awaitable[_Result]],
) -> Callable[_Params, Coroutine[Any, Any, _Result]]:
    """Weaviate errors escaping a store operation become `DocumentStoreUnavailableError` (a 503 for
    clients): a Weaviate that is down or restarting is a server condition, not bad input."""

    @functools.wraps(method)
    async def guarded(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        refuse_while_restarting(getattr(args[0], "local_weaviate", None) if args else None)
        try:
            return await method(*args, **kwargs)
        except WeaviateBaseError as exc:
            log.warning("document store operation %s failed: %r", method.__name__, exc)
            raise DocumentStoreUnavailableError(
                f"the document store (Weaviate) is unavailable or failed ({type(exc).__name__}); "
                "retry shortly") from exc

    return guarded


def wants_all_sources(document_choice: Sequence[str] | None) -> bool:
    return not document_choice or ALL_SOURCES in document_choice


class WeaviateDocumentStore:
    """`DocumentStore` on a connected async Weaviate client."""

    def __init__(self, client: weaviate.WeaviateAsyncClient, embedder: Embedder, collections: list[str],
                 *, limits: IngestLimits = DEFAULT_LIMITS, url_policy: UrlPolicy = DEFAULT_URL_POLICY,
                 resolve: Resolver = resolve_host) -> None:
        for mode in collections:
            if mode != NO_DOCUMENTS_MODE and not _COLLECTION_NAME.match(mode):
                raise ValueError(f"collection name {mode!r} must start with a letter and hold only "
                                 "letters, digits and underscores (at most 64)")
        self.client = client
        self.embedder = embedder
        self.limits = limits
        self.url_policy = url_policy
        self._resolve_host = resolve
        self._modes = list(dict.fromkeys(collections))
        self._checked: set[str] = set()  # Weaviate collections whose embedding model matched ours
        self._create_lock = asyncio.Lock()
        # The weaviate-server this store started itself (no --weaviate_url), else None.
        self.local_weaviate: WeaviateProcess | None = None
        # Open-access registrations, on the same Weaviate (every replica sees them).
        self.logins: WeaviateLogins | None = None

    def collections(self) -> list[str]:
        return list(self._modes)

    # ---- collection and tenant resolution ---------------------------------------------------

    def _resolve(self, mode: str, identity: Identity) -> tuple[str, str]:
        """(Weaviate collection, tenant or "") of a `langchain_mode`, refusing unknown ones."""
        if mode not in self._modes:
            offered = ", ".join(m for m in self._modes) or "(none)"
            raise UnknownCollectionError(f"unknown collection (langchain_mode) {mode!r}; this server "
                                         f"offers: {offered}")
        if mode == NO_DOCUMENTS_MODE:
            documents = [m for m in self._modes if m != NO_DOCUMENTS_MODE]
            raise DocumentError(f"{NO_DOCUMENTS_MODE} is plain chat without documents; choose a document "
                                f"collection: {', '.join(documents) or '(none offered)'}")
        tenant = tenant_name(identity.username) if mode == PERSONAL_MODE else ""
        return weaviate_collection_name(mode), tenant

    async def _check_model(self, name: str) -> None:
        """Refuse a collection that was built with another embedding model."""
        if name in self._checked:
            return
        config = await self.client.collections.use(name).config.get()
        recorded = parse_embedding_record(config.description)
        ours = (self.embedder.model_name, self.embedder.dimension)
        if recorded != ours:
            made_with = f"{recorded[0]} ({recorded[1]} dimensions)" if recorded else "an unknown model"
            raise DocumentError(
                f"collection {name.removeprefix(COLLECTION_PREFIX)!r} was built with embeddings from "
                f"{made_with}, but this server embeds with {ours[0]} ({ours[1]} dimensions); "
                "use the same --embedding_server as when it was built, or another collection")
        self._checked.add(name)

    async def _readable(self, mode: str, identity: Identity) -> Any | None:
        """The collection handle to read from, or None when it (or the user's tenant) has no data yet."""
        name, tenant = self._resolve(mode, identity)
        if not await self.client.collections.exists(name):
            return None
        await self._check_model(name)
        collection = self.client.collections.use(name)
        if tenant:
            if not await collection.tenants.exists(tenant):
                return None
            return collection.with_tenant(tenant)
        return collection

    async def _writable(self, mode: str, identity: Identity) -> tuple[Any, str, str]:
        """The collection handle to write to (created on first use), its name and tenant."""
        name, tenant = self._resolve(mode, identity)
        async with self._create_lock:
            if not await self.client.collections.exists(name):
                await self._create_collection(name, multi_tenant=bool(tenant))
            await self._check_model(name)
            collection = self.client.collections.use(name)
            if tenant and not await collection.tenants.exists(tenant):
                await collection.tenants.create([Tenant(name=tenant)])
        return (collection.with_tenant(tenant) if tenant else collection), name, tenant

    async def _create_collection(self, name: str, *, multi_tenant: bool) -> None:
        log.info("creating Weaviate collection %s (multi-tenant: %s)", name, multi_tenant)
        await self.client.collections.create(
            name,
            description=embedding_record(self.embedder),
            vector_config=Configure.Vectors.self_provided(
                vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)),
            multi_tenancy_config=Configure.multi_tenancy(enabled=multi_tenant),
            properties=[
                Property(name="content", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
                # Exact-match filtering and grouping on the source name.
                Property(name="source", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                         index_searchable=False),
                Property(name="chunk_id", data_type=DataType.INT),
                Property(name="page", data_type=DataType.INT),
                Property(name="kind", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                         index_searchable=False),
                Property(name="content_hash", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                         index_searchable=False),
                Property(name="added_at", data_type=DataType.NUMBER),
            ],
        )

    # ---- ingestion ---------------------------------------------------------------------------

    @store_failures_unavailable
    async def add_text(self, text: str, *, collection: str, identity: Identity,
                       source: str | None = None, chunk_size: int = 512) -> AddResult:
        self._resolve(collection, identity)
        validate_chunk_size(chunk_size)
        document = load_text(text, source=source, limits=self.limits)
        return await self._store(document, collection=collection, identity=identity, chunk_size=chunk_size)

    @store_failures_unavailable
    async def add_url(self, url: str, *, collection: str, identity: Identity,
                      chunk_size: int = 512) -> AddResult:
        self._resolve(collection, identity)
        validate_chunk_size(chunk_size)
        document = await fetch_url(url, limits=self.limits, policy=self.url_policy,
                                   resolve=self._resolve_host)
        return await self._store(document, collection=collection, identity=identity, chunk_size=chunk_size)

    @store_failures_unavailable
    async def add_file(self, path: str, *, collection: str, identity: Identity,
                       chunk_size: int = 512, source: str | None = None) -> AddResult:
        self._resolve(collection, identity)
        validate_chunk_size(chunk_size)
        document = await asyncio.to_thread(load_file, path, source=source, limits=self.limits)
        return await self._store(document, collection=collection, identity=identity, chunk_size=chunk_size)

    async def _store(self, document: LoadedDocument, *, collection: str, identity: Identity,
                     chunk_size: int) -> AddResult:
        """Write the chunks of a parsed document that are not stored yet, then drop the source's
        chunks that the new version no longer has. A failure part-way removes what this call
        wrote, so the collection is as before."""
        chunks = self.chunks_of(document, chunk_size)
        handle, name, tenant = await self._writable(collection, identity)
        ids = [chunk_uuid(name, tenant, chunk) for chunk in chunks]
        existing = await self._existing_ids(handle, ids)
        new = [(uuid, chunk) for uuid, chunk in zip(ids, chunks, strict=True) if uuid not in existing]
        vectors = await self.embedder.embed([chunk.content for _, chunk in new]) if new else []
        added_at = time.time()
        objects = [
            DataObject(uuid=uuid, vector=vector, properties={
                "content": chunk.content, "source": chunk.source, "chunk_id": chunk.chunk_id,
                "page": chunk.page, "kind": document.kind, "content_hash": chunk.content_hash,
                "added_at": added_at,
            })
            for (uuid, chunk), vector in zip(new, vectors, strict=True)
        ]
        written: list[str] = []
        try:
            for start in range(0, len(objects), PAGE_SIZE):
                batch = objects[start:start + PAGE_SIZE]
                result = await handle.data.insert_many(batch)
                written.extend(str(u) for i, u in result.uuids.items() if i not in result.errors)
                if result.errors:
                    first = next(iter(result.errors.values()))
                    raise DocumentError(f"{document.source}: Weaviate refused {len(result.errors)} "
                                        f"chunks ({first.message}); nothing was added")
        except (WeaviateBaseError, DocumentError) as exc:
            await self._delete_ids(handle, written)
            if isinstance(exc, DocumentError):
                raise
            raise DocumentStoreUnavailableError(
                f"{document.source}: storing failed ({type(exc).__name__}: {exc}); nothing was added; "
                "retry shortly") from exc
        stale = set(await self._source_ids(handle, document.source)) - set(ids)
        await self._delete_ids(handle, sorted(stale))
        log.info("stored %s in %s: %d new chunks, %d already present, %d stale removed", document.source,
                 name, len(new), len(chunks) - len(new), len(stale))
        return AddResult(source=document.source, chunks_added=len(new),
                         duplicate_chunks_skipped=len(chunks) - len(new))

    def chunks_of(self, document: LoadedDocument, chunk_size: int) -> list[Chunk]:
        """The chunks stored for a document: none longer than this store's embedder reads."""
        return chunk_document(document, chunk_size, window=token_window_of(self.embedder))

    async def _existing_ids(self, handle: Any, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), PAGE_SIZE):
            batch = ids[start:start + PAGE_SIZE]
            response = await handle.query.fetch_objects(filters=Filter.by_id().contains_any(batch),
                                                        limit=len(batch), return_properties=[])
            found.update(str(obj.uuid) for obj in response.objects)
        return found

    async def _delete_ids(self, handle: Any, ids: list[str]) -> None:
        for start in range(0, len(ids), PAGE_SIZE):
            await handle.data.delete_many(where=Filter.by_id().contains_any(ids[start:start + PAGE_SIZE]))

    async def _source_ids(self, handle: Any, source: str) -> list[str]:
        return [str(obj.uuid) for obj in await self._source_objects(handle, source, properties=["chunk_id"])]

    async def _source_objects(self, handle: Any, source: str, *, properties: list[str]) -> list[Any]:
        """Every object of one source in chunk order, paged by chunk number (no offset limit)."""
        objects: list[Any] = []
        last = -1
        while True:
            response = await handle.query.fetch_objects(
                filters=(Filter.by_property("source").equal(source)
                         & Filter.by_property("chunk_id").greater_than(last)),
                sort=Sort.by_property("chunk_id", ascending=True),
                limit=PAGE_SIZE, return_properties=properties)
            objects.extend(response.objects)
            if len(response.objects) < PAGE_SIZE:
                return objects
            last = int(response.objects[-1].properties["chunk_id"])

    # ---- reading -----------------------------------------------------------------------------

    @store_failures_unavailable
    async def list_sources(self, *, collection: str, identity: Identity) -> list[str]:
        handle = await self._readable(collection, identity)
        if handle is None:
            return []
        from weaviate.classes.aggregate import GroupByAggregate  # noqa: PLC0415

        response = await handle.aggregate.over_all(
            group_by=GroupByAggregate(prop="source", limit=MAX_SOURCES_LISTED), total_count=True)
        return sorted(str(group.grouped_by.value) for group in response.groups)

    @store_failures_unavailable
    async def delete_sources(self, sources: list[str], *, collection: str, identity: Identity) -> list[str]:
        handle = await self._readable(collection, identity)
        if handle is None:
            return []
        targets = await self.list_sources(collection=collection, identity=identity) \
            if ALL_SOURCES in sources else list(dict.fromkeys(sources))
        for start in range(0, len(targets), 100):
            names = targets[start:start + 100]
            # delete_many removes at most QUERY_MAXIMUM_RESULTS objects a call: repeat until none match.
            where = Filter.by_property("source").contains_any(names)
            while (await handle.data.delete_many(where=where)).matches:
                pass
        return await self.list_sources(collection=collection, identity=identity)

    # ---- leftovers ---------------------------------------------------------------------------

    @store_failures_unavailable
    async def expire_personal_tenants(self, username_prefix: str, idle_seconds: float) -> list[str]:
        """Delete the MyData tenants of users whose name starts with `username_prefix` (anonymous
        Gradio sessions) when nothing was added to them for `idle_seconds`; their tenant names."""
        name = weaviate_collection_name(PERSONAL_MODE)
        if PERSONAL_MODE not in self._modes or not await self.client.collections.exists(name):
            return []
        collection = self.client.collections.get(name)
        # Sanitising keeps '-', letters and digits as they are, so only names that start with the
        # prefix give tenant names that do (login names with it are refused: auth.py).
        readable = tenant_name(username_prefix).rsplit("-", 1)[0]
        cutoff = time.time() - idle_seconds
        expired = []
        for tenant in await collection.tenants.get():
            if not tenant.startswith(readable):
                continue
            newest = await collection.with_tenant(tenant).query.fetch_objects(
                limit=1, sort=Sort.by_property("added_at", ascending=False), return_properties=["added_at"])
            added = [_number(obj.properties.get("added_at")) for obj in newest.objects]
            if not added or added[0] < cutoff:
                expired.append(tenant)
        if expired:
            await collection.tenants.remove(expired)
            log.info("deleted %d idle anonymous MyData tenants", len(expired))
        return expired

    @store_failures_unavailable
    async def get_document(self, source: str, *, collection: str, identity: Identity) -> list[Hit]:
        handle = await self._readable(collection, identity)
        if handle is None:
            return []
        objects = await self._source_objects(handle, source, properties=_CHUNK_PROPERTIES)
        return [self._hit(obj) for obj in objects]

    @store_failures_unavailable
    async def search(self, query: str, *, collection: str, identity: Identity, k: int,
                     document_choice: list[str] | None = None) -> list[Hit]:
        handle = await self._readable(collection, identity)
        if handle is None or k <= 0 or not query.strip():
            return []
        vector = (await self.embedder.embed([query]))[0]
        filters = None if wants_all_sources(document_choice) \
            else Filter.by_property("source").contains_any(list(document_choice or []))
        response = await handle.query.hybrid(
            query=query, vector=vector, alpha=HYBRID_ALPHA, limit=k, filters=filters,
            query_properties=["content"], return_properties=_CHUNK_PROPERTIES,
            return_metadata=MetadataQuery(score=True))
        return [self._hit(obj) for obj in response.objects]

    @store_failures_unavailable
    async def parts(self, *, collection: str, identity: Identity, k: int,
                    document_choice: list[str] | None = None, query: str | None = None) -> list[Hit]:
        if query and query.strip() and k > 0:
            return await self.search(query, collection=collection, identity=identity, k=k,
                                     document_choice=document_choice)
        handle = await self._readable(collection, identity)
        if handle is None or k == 0:
            return []
        wanted = None if wants_all_sources(document_choice) else set(document_choice or [])
        objects = [obj async for obj in handle.iterator(return_properties=_CHUNK_PROPERTIES)
                   if wanted is None or obj.properties["source"] in wanted]
        # Document order: documents in the order they were added, chunks in text order.
        objects.sort(key=lambda obj: (float(obj.properties.get("added_at") or 0.0),
                                      str(obj.properties["source"]), int(obj.properties["chunk_id"])))
        hits = [self._hit(obj) for obj in objects]
        return hits if k < 0 else hits[:k]

    @staticmethod
    def _hit(obj: Any) -> Hit:
        props = obj.properties
        page = props.get("page")
        score = obj.metadata.score if obj.metadata is not None and obj.metadata.score is not None else 0.0
        return Hit(
            content=str(props["content"]), source=str(props["source"]), score=float(score),
            page=int(page) if page is not None else None, chunk_id=int(props["chunk_id"]),
            metadata={"page": int(page) if page is not None else None, "chunk_id": int(props["chunk_id"]),
                      "kind": str(props.get("kind") or "")},
        )


def _connect(endpoint: WeaviateEndpoint, api_key: str) -> weaviate.WeaviateAsyncClient:
    return weaviate.use_async_with_custom(
        http_host=endpoint.http_host, http_port=endpoint.http_port, http_secure=endpoint.http_secure,
        grpc_host=endpoint.grpc_host, grpc_port=endpoint.grpc_port, grpc_secure=endpoint.http_secure,
        auth_credentials=Auth.api_key(api_key) if api_key else None,
        additional_config=AdditionalConfig(timeout=Timeout(init=30, query=60, insert=120)),
        # The client's start-up checks include a version look-up on pypi.org: a private
        # deployment must not phone home (and, air-gapped, would wait out the timeout).
        # We check the server's readiness ourselves right after connecting.
        skip_init_checks=True,
    )


# Why a connection to Weaviate was not made: the client wraps most failures, a connect timeout
# reaches us as httpx's own.
_CONNECT_FAILURES = (WeaviateBaseError, httpx.HTTPError, OSError, TimeoutError)
_FIRST_RETRY_S, _LONGEST_RETRY_S = 0.5, 5.0


async def _connect_when_ready(
    endpoint: WeaviateEndpoint, api_key: str, wait_seconds: float
) -> weaviate.WeaviateAsyncClient:
    """A client whose server said it is ready. Tried again, at growing intervals, for `wait_seconds`:
    in a cluster an api pod may start before Weaviate does, or before the NetworkPolicy that admits it
    covers its new address; exiting would only trade this wait for the kubelet's crash-loop backoff."""
    deadline = time.monotonic() + wait_seconds
    delay = _FIRST_RETRY_S
    where = f"Weaviate at {endpoint.http_host}:{endpoint.http_port}"
    while True:
        client = _connect(endpoint, api_key)
        try:
            await client.connect()
            if await client.is_ready():
                return client
            problem = "not ready"
        except _CONNECT_FAILURES as exc:
            detail = f": {exc}" if str(exc) else ""
            problem = f"not reachable ({type(exc).__name__}{detail})"
        await client.close()
        left = deadline - time.monotonic()
        if left <= 0:
            waited = f" after {wait_seconds:g} s of trying" if wait_seconds else ""
            raise DocumentError(f"{where} is {problem}{waited}; check --weaviate_url and that the server "
                                "is up")
        log.info("%s is %s; trying again for %.0f s more", where, problem, left)
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, _LONGEST_RETRY_S)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def sweep_interval(idle_seconds: float) -> float:
    """How often the sweeper looks: a tenth of the idle time, between 1 s and 10 minutes, so a
    tenant is deleted at most idle_seconds + this after its last addition."""
    return min(max(idle_seconds / 10, 1.0), 600.0)


async def sweep_anonymous_mydata(store: WeaviateDocumentStore, username_prefix: str,
                                 idle_seconds: float) -> None:
    """Run until cancelled: expire idle anonymous MyData tenants (every replica may sweep; deleting
    a tenant twice is harmless)."""
    while True:
        await asyncio.sleep(sweep_interval(idle_seconds))
        # A failure is logged by the store; the next sweep tries again.
        with contextlib.suppress(DocumentStoreUnavailableError):
            await store.expire_personal_tenants(username_prefix, idle_seconds)


@asynccontextmanager
async def open_document_store(*, weaviate_url: str, weaviate_api_key: str, save_dir: Path,
                              embedding_server: str, collections: list[str],
                              embedding_model: str = "",
                              limits: IngestLimits = DEFAULT_LIMITS,
                              url_policy: UrlPolicy = DEFAULT_URL_POLICY,
                              embedder: Embedder | None = None,
                              wait_seconds: float = 0.0) -> AsyncIterator[WeaviateDocumentStore]:
    """A connected store; with no `weaviate_url`, also a local weaviate-server under `save_dir`,
    restarted if it dies and stopped on exit. `embedder` overrides `embedding_server` (tests);
    `url_policy` says which hosts `add_url` may fetch from; `wait_seconds`: how long an external
    Weaviate may take to answer ready (0: asked once)."""
    if embedder is None:
        embedder = await asyncio.to_thread(functools.partial(load_embedder, embedding_server,
                                                             model=embedding_model))
    async with AsyncExitStack() as stack:
        process: WeaviateProcess | None = None
        if weaviate_url:
            endpoint = parse_weaviate_url(weaviate_url)
        else:
            process = WeaviateProcess(Path(save_dir) / "weaviate")
            await asyncio.to_thread(process.start)
            stack.push_async_callback(asyncio.to_thread, process.stop)
            supervisor = asyncio.create_task(process.supervise(), name="weaviate-supervisor")
            stack.callback(supervisor.cancel)
            assert process.ports is not None
            endpoint = WeaviateEndpoint(LOOPBACK, process.ports.http, False, LOOPBACK, process.ports.grpc)
        client = await _connect_when_ready(endpoint, weaviate_api_key, wait_seconds if weaviate_url else 0.0)
        stack.push_async_callback(client.close)
        store = WeaviateDocumentStore(client, embedder, collections, limits=limits, url_policy=url_policy)
        store.local_weaviate = process
        store.logins = WeaviateLogins(client, process)
        yield store
