"""Documents and logins in a replicated Weaviate survive losing one node.

Three real weaviate-server processes form one cluster on loopback, started the way the operator's
StatefulSet starts `retrieval.replicas: 3` pods (Raft over all three, REPLICATION_MINIMUM_FACTOR 3).
Everything is written through node 0, node 0 is killed, and node 1 alone is asked: it must answer
every document, tenant and login from its own copy, take new writes, and node 0 must come back with
what it missed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from h2ogpt_api.retrieval.base import DocumentStoreUnavailableError, Identity
from h2ogpt_api.retrieval.logins import LOGINS_COLLECTION
from h2ogpt_api.retrieval.store import WeaviateDocumentStore, open_document_store, weaviate_collection_name

from tests.support.weaviate import WeaviateCluster, start_weaviate_cluster

pytestmark = pytest.mark.timeout(600)

ALICE = Identity("alice", authenticated=True)
RIVERS = "The Nile flows north through eleven countries and is the longest river in Africa."
MOUNTAINS = "Mount Everest, in the Himalaya, is the highest mountain above sea level."
CATCH_UP_BOUND_S = 120
ELECTION_BOUND_S = 240
DESERTS = "The Sahara is the largest hot desert; Antarctica is the largest desert of all."


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeaviateCluster]:
    root = tmp_path_factory.mktemp("weaviate-cluster")
    started = start_weaviate_cluster(root, size=3, replication_factor=3)
    try:
        yield started
    finally:
        started.stop()


@asynccontextmanager
async def store_on(url: str) -> AsyncIterator[WeaviateDocumentStore]:
    async with open_document_store(weaviate_url=url, weaviate_api_key="", save_dir=Path("unused"),
                                   embedding_server="", collections=["Shared", "MyData"]) as store:
        yield store


async def top_source(store: WeaviateDocumentStore, question: str, collection: str) -> str:
    hits = await store.search(question, collection=collection, identity=ALICE, k=1)
    return hits[0].source if hits else ""


def test_documents_and_logins_survive_losing_the_node_they_were_written_through(
        cluster: WeaviateCluster) -> None:
    async def write_through_node0() -> None:
        async with store_on(cluster.url(0)) as store:
            await store.add_text(RIVERS, collection="Shared", identity=ALICE, source="rivers")
            await store.add_text(MOUNTAINS, collection="MyData", identity=ALICE, source="mountains")
            assert store.logins is not None
            await store.logins.register("alice", "argon2-hash-of-alice")
            for name in (weaviate_collection_name("Shared"), weaviate_collection_name("MyData"),
                         LOGINS_COLLECTION):
                config = await store.client.collections.use(name).config.get()
                assert config.replication_config.factor == 3, (name, config.replication_config)

    async def read_and_write_through_node1() -> None:
        async with store_on(cluster.url(1)) as store:
            assert await top_source(store, "longest river in Africa", "Shared") == "rivers"
            assert await top_source(store, "highest mountain", "MyData") == "mountains"
            assert store.logins is not None
            assert await store.logins.password_hash("alice") == "argon2-hash-of-alice"
            # Two of three replicas answer: writes reach quorum while node 0 is away.
            await store.add_text(DESERTS, collection="Shared", identity=ALICE, source="deserts")
            # A registration too (not on every replica, as while all are up: on the two that answer).
            assert await store.logins.register("bob", "argon2-hash-of-bob") == "argon2-hash-of-bob"
            assert await store.logins.password_hash("bob") == "argon2-hash-of-bob"

    async def node0_has_what_it_missed() -> float:
        """Seconds until node 0 lists and finds the document written while it was away. Searches and
        listings read the asked node's own copy, so this is Weaviate's async replication at work:
        it compares the replicas' hash trees and copies over what one lacks."""
        async with store_on(cluster.url(0)) as store:
            started = time.monotonic()
            while True:
                try:
                    if (await store.list_sources(collection="Shared", identity=ALICE) == ["deserts", "rivers"]
                            and await top_source(store, "largest hot desert", "Shared") == "deserts"):
                        return time.monotonic() - started
                except DocumentStoreUnavailableError:
                    pass  # still rejoining ("retry shortly", seen once in make test): not caught up yet
                assert time.monotonic() - started < CATCH_UP_BOUND_S, "node 0 never caught up"
                await asyncio.sleep(0.5)

    asyncio.run(write_through_node0())
    cluster.nodes[0].kill()
    assert not cluster.nodes[0].is_running()
    # Node 0 may have led Raft (the schema): until the two others elect a leader, the store answers
    # "unavailable, retry shortly", which is what a client sees too.
    started = time.monotonic()
    while True:
        try:
            asyncio.run(read_and_write_through_node1())
            break
        except DocumentStoreUnavailableError:
            assert time.monotonic() - started < ELECTION_BOUND_S, "node 1 never answered without node 0"
    print(f"node 1 answered without node 0 after {time.monotonic() - started:.1f} s")
    cluster.nodes[0].start()  # same ports and data: it rejoins Raft and the shards' replica sets
    caught_up_s = asyncio.run(node0_has_what_it_missed())
    print(f"node 0 listed the missed document {caught_up_s:.1f} s after it rejoined")
