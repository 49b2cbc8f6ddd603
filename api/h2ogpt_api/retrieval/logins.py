"""Open-access registrations (name -> argon2 hash) in Weaviate, the one store every replica of a
stack already shares and that survives restarts (its PVC): no new component to run.

One object per login in the `H2ogpt_Logins` collection, its UUID derived from the name, so two
replicas registering the same name at once cannot both win: Weaviate refuses the second insert
of an existing UUID, and the loser reads back the winner's hash. Objects carry no vector.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import weaviate
from weaviate.classes.config import Configure, ConsistencyLevel, DataType, Property, Tokenization
from weaviate.exceptions import WeaviateBaseError
from weaviate.util import generate_uuid5

from h2ogpt_api.retrieval.base import DocumentStoreUnavailableError
from h2ogpt_api.retrieval.weaviate_process import WeaviateProcess, refuse_while_restarting

log = logging.getLogger(__name__)

LOGINS_COLLECTION = "H2ogpt_Logins"


def login_uuid(name: str) -> str:
    return str(generate_uuid5(f"h2ogpt-login/{name}"))


class WeaviateLogins:
    """`LoginRegistry` (auth.py) on a connected async Weaviate client."""

    def __init__(self, client: weaviate.WeaviateAsyncClient, local: WeaviateProcess | None = None) -> None:
        self.client = client
        self.local = local  # the weaviate-server this process supervises, if it is one
        self._ready = False
        self._lock = asyncio.Lock()

    async def _collection(self) -> Any:
        if not self._ready:
            async with self._lock:
                if not self._ready and not await self.client.collections.exists(LOGINS_COLLECTION):
                    try:
                        await self.client.collections.create(
                            LOGINS_COLLECTION,
                            description="h2ogpt-api open-access logins: name and argon2 hash",
                            vector_config=Configure.Vectors.self_provided(),
                            properties=[
                                Property(name="username", data_type=DataType.TEXT,
                                         tokenization=Tokenization.FIELD, index_searchable=False),
                                Property(name="password_hash", data_type=DataType.TEXT,
                                         index_searchable=False, index_filterable=False),
                            ],
                        )
                    except WeaviateBaseError:
                        # Another replica created it between our check and our create.
                        if not await self.client.collections.exists(LOGINS_COLLECTION):
                            raise
                self._ready = True
        return self.client.collections.get(LOGINS_COLLECTION)

    async def password_hash(self, name: str) -> str | None:
        refuse_while_restarting(self.local)
        try:
            collection = await self._collection()
            found = await collection.query.fetch_object_by_id(login_uuid(name))
        except WeaviateBaseError as exc:
            raise _unavailable(exc) from exc
        if found is None:
            return None
        return str(found.properties["password_hash"])

    async def register(self, name: str, password_hash: str) -> str:
        refuse_while_restarting(self.local)
        try:
            collection = await self._collection()
            properties = {"username": name, "password_hash": password_hash}
            try:
                await _insert_on_every_replica(collection, properties, login_uuid(name))
                return password_hash
            except WeaviateBaseError:
                stored = await self.password_hash(name)
                if stored is None:
                    raise
                return stored  # registered first elsewhere
        except WeaviateBaseError as exc:
            raise _unavailable(exc) from exc


async def _insert_on_every_replica(collection: Any, properties: dict[str, str], uuid: str) -> None:
    """Insert on every replica of a replicated store (consistency ALL) while all are up, else on a
    quorum. A login written on a quorum only can be missing from the replica that was not in it,
    until Weaviate's async replication copies it over: a node lost just after the registration left
    the login unreadable through the other node for that while (tests/integration/
    test_store_replication.py, once in a fresh-clone `make test`). Registrations are rare; the one
    extra round trip when a replica is down is worth a login that any replica can answer at once."""
    try:
        await collection.with_consistency_level(ConsistencyLevel.ALL).data.insert(
            properties=properties, uuid=uuid
        )
    except WeaviateBaseError as exc:
        # A replica down (or the name taken: then this insert fails too, and the caller reads it back).
        log.info("login not written on every replica (%s); writing it on a quorum", type(exc).__name__)
        await collection.with_consistency_level(ConsistencyLevel.QUORUM).data.insert(
            properties=properties, uuid=uuid
        )


def _unavailable(exc: WeaviateBaseError) -> DocumentStoreUnavailableError:
    log.warning("login store operation failed: %r", exc)
    return DocumentStoreUnavailableError(
        f"the login store (Weaviate) is unavailable or failed ({type(exc).__name__}); retry shortly"
    )
