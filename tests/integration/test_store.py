"""The Weaviate document store against a real weaviate-server: ingestion of every format, search with
sources, de-duplication, per-user isolation, deletion, persistence, bad input, model mismatch."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import weaviate
from fpdf import FPDF
from h2ogpt_api.retrieval.base import DocumentError, Identity, UnknownCollectionError
from h2ogpt_api.retrieval.ingest import IngestLimits
from h2ogpt_api.retrieval.store import (
    WeaviateDocumentStore,
    open_document_store,
    parse_weaviate_url,
    weaviate_collection_name,
)
from h2ogpt_api.retrieval.url_guard import UrlPolicy
from h2ogpt_api.retrieval.weaviate_process import WeaviatePorts, WeaviateProcess

from tests.support.loopback_http import serve_on_loopback
from tests.support.weaviate import WeaviateServer, weaviate_binary_or_fail

ALICE = Identity("alice@example.com", authenticated=True)
BOB = Identity("bob", authenticated=True)
CAROL = Identity("carol", authenticated=True)
LIMITS = IngestLimits(max_file_bytes=20_000, url_timeout_s=5.0)

RIVERS = ("The Nile flows north through eleven countries and is the longest river in Africa.\n\n"
          "The Amazon carries more water than any other river on Earth.")
MOUNTAINS = "Mount Everest, in the Himalaya, is the highest mountain above sea level."
COOKING = "# Bread\n\nKnead the dough for ten minutes, then let it rise for an hour before baking."
ASTRONOMY_HTML = ("<html><head><title>Planets</title><script>track()</script></head><body>"
                  "<h1>Planets</h1><p>Jupiter is the largest planet of the solar system.</p></body></html>")
PDF_PAGES = ["Chapter one describes the migration of arctic terns.",
             "Chapter two explains how honeybees communicate by dancing."]
SERVED_PAGE = "<html><body><p>Volcanoes erupt molten rock called lava.</p></body></html>"


def make_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("docs")
    (folder / "mountains.txt").write_text(MOUNTAINS)
    (folder / "bread.md").write_text(COOKING)
    (folder / "planets.html").write_text(ASTRONOMY_HTML)
    (folder / "empty.txt").write_text(" \n\n ")
    (folder / "sheet.xlsx").write_bytes(b"PK\x03\x04 not supported")
    (folder / "huge.txt").write_text("too many words here. " * 2000)
    return {path.name: path for path in folder.iterdir()} | {
        "animals.pdf": make_pdf(folder / "animals.pdf", PDF_PAGES)}


@pytest.fixture(scope="module")
def web(files: dict[str, Path]) -> Iterator[str]:
    """A web server on loopback serving an HTML page and the PDF."""
    pdf = files["animals.pdf"].read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            content_type, body = {"/volcano.html": ("text/html", SERVED_PAGE.encode()),
                                  "/animals.pdf": ("application/pdf", pdf)}.get(self.path, ("", b""))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", content_type or "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serve_on_loopback(Handler) as url:
        yield url


@asynccontextmanager
async def store_on(server: WeaviateServer, *modes: str) -> AsyncIterator[WeaviateDocumentStore]:
    async with open_document_store(weaviate_url=server.url, weaviate_api_key="", save_dir=Path("unused"),
                                   embedding_server="", collections=["LLM", "MyData", *modes],
                                   limits=LIMITS, url_policy=UrlPolicy.from_settings(["127.0.0.1"])) as store:
        yield store


async def snapshot(store: WeaviateDocumentStore, mode: str, who: Identity = ALICE) -> dict[str, list[str]]:
    """Every source with its chunks' text: what 'nothing lost, nothing duplicated' is checked against."""
    return {source: [hit.content for hit in await store.get_document(source, collection=mode, identity=who)]
            for source in await store.list_sources(collection=mode, identity=who)}


def test_every_format_is_found_by_search_with_its_source(weaviate_server: WeaviateServer,
                                                         files: dict[str, Path], web: str) -> None:
    async def scenario() -> None:
        async with store_on(weaviate_server, "Formats") as store:
            mode = "Formats"
            await store.add_text(RIVERS, collection=mode, identity=ALICE, source="rivers")
            for name in ("mountains.txt", "bread.md", "planets.html", "animals.pdf"):
                result = await store.add_file(str(files[name]), collection=mode, identity=ALICE)
                assert (result.source, result.duplicate_chunks_skipped) == (name, 0)
                assert result.chunks_added >= 1
            await store.add_url(f"{web}/volcano.html", collection=mode, identity=ALICE)

            expectations = {
                "Which river is the longest in Africa?": "rivers",
                "highest mountain": "mountains.txt",
                "how long should dough be kneaded": "bread.md",
                "largest planet": "planets.html",
                "how do honeybees communicate": "animals.pdf",
                "what comes out of a volcano": f"{web}/volcano.html",
            }
            for question, source in expectations.items():
                hits = await store.search(question, collection=mode, identity=ALICE, k=3)
                assert hits[0].source == source, (question, hits)
                assert hits[0].score >= hits[-1].score
            bees = (await store.search("honeybees dancing", collection=mode, identity=ALICE, k=1))[0]
            assert (bees.page, bees.content) == (2, PDF_PAGES[1])
            sources = await store.list_sources(collection=mode, identity=ALICE)
            assert sources == sorted([*expectations.values()])
            planets = await store.get_document("planets.html", collection=mode, identity=ALICE)
            assert "track()" not in str(planets)

    asyncio.run(scenario())


def test_document_choice_limits_search_and_parts_follow_document_order(
        weaviate_server: WeaviateServer) -> None:
    async def scenario() -> None:
        async with store_on(weaviate_server, "Choice") as store:
            long_text = "\n\n".join(f"Section {i}: the river delta number {i} floods in spring."
                                    for i in range(12))
            await store.add_text(long_text, collection="Choice", identity=ALICE, source="deltas",
                                 chunk_size=128)
            await store.add_text(RIVERS, collection="Choice", identity=ALICE, source="rivers")
            only = await store.search("river", collection="Choice", identity=ALICE, k=10,
                                      document_choice=["rivers"])
            assert {hit.source for hit in only} == {"rivers"}
            everything = await store.search("river", collection="Choice", identity=ALICE, k=30,
                                            document_choice=["All"])
            assert {hit.source for hit in everything} == {"deltas", "rivers"}

            document = await store.get_document("deltas", collection="Choice", identity=ALICE)
            assert [hit.chunk_id for hit in document] == list(range(len(document)))
            assert len(document) >= 6
            assert all(f"Section {i}:" in " ".join(h.content for h in document) for i in range(12))
            first = await store.parts(collection="Choice", identity=ALICE, k=3)
            assert [(h.source, h.chunk_id) for h in first] == [("deltas", 0), ("deltas", 1), ("deltas", 2)]
            every = await store.parts(collection="Choice", identity=ALICE, k=-1, document_choice=["rivers"])
            assert [h.source for h in every] == ["rivers"]
            relevant = await store.parts(collection="Choice", identity=ALICE, k=2, query="Amazon water")
            assert relevant[0].source == "rivers"

    asyncio.run(scenario())


def test_adding_the_same_document_twice_stores_nothing_new(weaviate_server: WeaviateServer,
                                                           files: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with store_on(weaviate_server, "Dedup") as store:
            first = await store.add_file(str(files["animals.pdf"]), collection="Dedup", identity=ALICE)
            before = await snapshot(store, "Dedup")
            again = await store.add_file(str(files["animals.pdf"]), collection="Dedup", identity=ALICE)
            assert (again.chunks_added, again.duplicate_chunks_skipped) == (0, first.chunks_added)
            assert await snapshot(store, "Dedup") == before
            pasted = await store.add_text(MOUNTAINS, collection="Dedup", identity=ALICE)
            assert (await store.add_text(MOUNTAINS, collection="Dedup", identity=ALICE)).chunks_added == 0
            # A new version of a source replaces the old one; unchanged chunks are kept.
            await store.add_text(RIVERS, collection="Dedup", identity=ALICE, source="notes")
            await store.add_text(COOKING, collection="Dedup", identity=ALICE, source="notes")
            assert (await snapshot(store, "Dedup"))["notes"] == [COOKING]
            assert pasted.source in await store.list_sources(collection="Dedup", identity=ALICE)

    asyncio.run(scenario())


def test_my_data_of_one_user_is_invisible_to_another(weaviate_server: WeaviateServer) -> None:
    async def scenario() -> None:
        async with store_on(weaviate_server) as store:
            secret = "The vault combination is 31-41-59."
            await store.add_text(secret, collection="MyData", identity=ALICE, source="vault")
            assert await store.list_sources(collection="MyData", identity=BOB) == []
            assert await store.search("vault combination", collection="MyData", identity=BOB, k=5) == []
            assert await store.get_document("vault", collection="MyData", identity=BOB) == []
            assert await store.parts(collection="MyData", identity=BOB, k=-1) == []
            await store.add_text("Bob's shopping list: milk.", collection="MyData", identity=BOB,
                                 source="vault")
            bob_hits = await store.search("vault combination", collection="MyData", identity=BOB, k=5)
            assert [h.content for h in bob_hits] == ["Bob's shopping list: milk."]
            assert await store.delete_sources(["All"], collection="MyData", identity=BOB) == []
            alice_hits = await store.search("vault combination", collection="MyData", identity=ALICE, k=5)
            assert [h.content for h in alice_hits] == [secret]

    asyncio.run(scenario())


def test_delete_sources(weaviate_server: WeaviateServer) -> None:
    async def scenario() -> None:
        async with store_on(weaviate_server, "Deleting") as store:
            for name, text in (("a", RIVERS), ("b", MOUNTAINS), ("c", COOKING)):
                await store.add_text(text, collection="Deleting", identity=ALICE, source=name)
            left = await store.delete_sources(["b", "not-there"], collection="Deleting", identity=ALICE)
            assert left == ["a", "c"]
            assert await store.get_document("b", collection="Deleting", identity=ALICE) == []
            assert await store.delete_sources(["All"], collection="Deleting", identity=ALICE) == []
            assert await store.search("river", collection="Deleting", identity=ALICE, k=5) == []

    asyncio.run(scenario())


def test_documents_survive_a_weaviate_restart_and_a_new_store(weaviate_server: WeaviateServer) -> None:
    async def add() -> None:
        async with store_on(weaviate_server, "Durable") as store:
            await store.add_text(RIVERS, collection="Durable", identity=ALICE, source="rivers")
            await store.add_text(MOUNTAINS, collection="MyData", identity=CAROL, source="peaks")

    async def check() -> None:
        async with store_on(weaviate_server, "Durable") as store:
            hits = await store.search("Amazon", collection="Durable", identity=ALICE, k=1)
            assert [h.source for h in hits] == ["rivers"]
            assert await store.list_sources(collection="MyData", identity=CAROL) == ["peaks"]
            assert (await store.add_text(RIVERS, collection="Durable", identity=ALICE,
                                         source="rivers")).chunks_added == 0

    asyncio.run(add())
    weaviate_server.restart()
    asyncio.run(check())


def test_bad_input_is_refused_and_changes_nothing(weaviate_server: WeaviateServer, files: dict[str, Path],
                                                  web: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]

    async def scenario() -> None:
        async with store_on(weaviate_server, "Careful") as store:
            await store.add_file(str(files["animals.pdf"]), collection="Careful", identity=ALICE)
            await store.add_text(RIVERS, collection="Careful", identity=ALICE, source="rivers")
            before = await snapshot(store, "Careful")
            attempts = {
                "unsupported file type '.xlsx'": store.add_file(
                    str(files["sheet.xlsx"]), collection="Careful", identity=ALICE),
                "the URL is unreachable": store.add_url(
                    f"http://127.0.0.1:{closed_port}/animals.pdf", collection="Careful", identity=ALICE),
                "over the limit of 20000 bytes": store.add_file(
                    str(files["huge.txt"]), collection="Careful", identity=ALICE),
                "the document is empty": store.add_file(
                    str(files["empty.txt"]), collection="Careful", identity=ALICE),
                "the server answered HTTP 404": store.add_url(
                    f"{web}/missing.pdf", collection="Careful", identity=ALICE),
                "chunk_size must be between": store.add_text(
                    MOUNTAINS, collection="Careful", identity=ALICE, chunk_size=5),
            }
            for message, attempt in attempts.items():
                with pytest.raises(DocumentError, match=message):
                    await attempt
                assert await snapshot(store, "Careful") == before, message

            offered = r"'Nope'; this server offers: LLM, MyData, Careful"
            with pytest.raises(UnknownCollectionError, match=offered):
                await store.search("x", collection="Nope", identity=ALICE, k=1)
            with pytest.raises(DocumentError, match="LLM is plain chat without documents"):
                await store.add_text(RIVERS, collection="LLM", identity=ALICE)

    asyncio.run(scenario())


def test_a_collection_built_with_another_embedding_model_is_refused(weaviate_server: WeaviateServer) -> None:
    endpoint = parse_weaviate_url(weaviate_server.url)
    with weaviate.connect_to_custom(http_host=endpoint.http_host, http_port=endpoint.http_port,
                                    http_secure=False, grpc_host=endpoint.grpc_host,
                                    grpc_port=endpoint.grpc_port, grpc_secure=False) as client:
        # As another deployment with a 768-dimension model would have left it.
        client.collections.create(weaviate_collection_name("Foreign"), description=(
            '{"h2ogpt_embedding_model": "BAAI/bge-base-en-v1.5", "h2ogpt_embedding_dimension": 768}'))

    async def scenario() -> None:
        async with store_on(weaviate_server, "Foreign") as store:
            for attempt in (store.add_text(RIVERS, collection="Foreign", identity=ALICE),
                            store.search("river", collection="Foreign", identity=ALICE, k=3)):
                with pytest.raises(DocumentError, match=r"built with embeddings from BAAI/bge-base-en-v1\.5 "
                                                        r"\(768 dimensions\), but this server embeds with "
                                                        r"sentence-transformers/all-MiniLM-L6-v2 \(384"):
                    await attempt

    asyncio.run(scenario())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_embedded_weaviate_is_restarted_when_it_dies_and_keeps_documents(tmp_path: Path) -> None:
    """`--weaviate_url` empty: the store runs its own weaviate-server under save_dir."""
    pids: list[int] = []

    async def first_life() -> None:
        async with open_document_store(weaviate_url="", weaviate_api_key="", save_dir=tmp_path,
                                       embedding_server="", collections=["UserData"]) as store:
            await store.add_text(RIVERS, collection="UserData", identity=ALICE, source="rivers")
            local = store.local_weaviate
            assert local is not None
            assert local.data_dir == tmp_path / "weaviate" / "data"
            assert local.pid is not None
            pids.append(local.pid)
            local.kill()  # a crash
            deadline = time.monotonic() + 90
            while local.restarts == 0 or not local.is_running():
                assert time.monotonic() < deadline, "the supervisor did not restart weaviate-server"
                await asyncio.sleep(0.5)
            assert local.pid is not None
            pids.append(local.pid)
            hits = await store.search("Amazon", collection="UserData", identity=ALICE, k=1)
            assert [h.source for h in hits] == ["rivers"]

    async def second_life() -> None:
        async with open_document_store(weaviate_url="", weaviate_api_key="", save_dir=tmp_path,
                                       embedding_server="", collections=["UserData"]) as store:
            assert await store.list_sources(collection="UserData", identity=ALICE) == ["rivers"]

    asyncio.run(first_life())
    assert not any(pid_alive(pid) for pid in pids), "weaviate-server still runs after the store closed"
    asyncio.run(second_life())


def test_a_weaviate_that_starts_late_is_waited_for_and_one_that_never_answers_is_named(
        tmp_path: Path) -> None:
    """An api pod may start before its Weaviate (a new stack, a restarting Weaviate pod, a
    NetworkPolicy not yet covering the pod's address): `wait_seconds` keeps trying instead of exiting."""
    ports = WeaviatePorts.pick_free()
    url = f"http://127.0.0.1:{ports.http}?grpc_port={ports.grpc}"

    def opening(wait_seconds: float) -> Any:
        return open_document_store(weaviate_url=url, weaviate_api_key="", save_dir=tmp_path,
                                   embedding_server="", collections=["LLM", "Late"], limits=LIMITS,
                                   wait_seconds=wait_seconds)

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(DocumentError, match=rf"Weaviate at 127.0.0.1:{ports.http} is not reachable "
                                                r"\(.*\); check --weaviate_url and that the server is up"):
            async with opening(0):
                pass
        assert time.monotonic() - started < 5  # asked once
        started = time.monotonic()
        with pytest.raises(DocumentError, match=r"is not reachable .* after 1\.5 s of trying; check"):
            async with opening(1.5):
                pass
        assert 1.5 <= time.monotonic() - started < 10
        late = WeaviateProcess(tmp_path / "late", binary=weaviate_binary_or_fail(), ports=ports)

        async def start_late() -> None:
            await asyncio.sleep(2)
            await asyncio.to_thread(late.start)

        starting = asyncio.create_task(start_late())
        started = time.monotonic()
        try:
            async with opening(120) as store:
                assert time.monotonic() - started >= 2  # open once the server is up, not before
                await store.add_text(RIVERS, collection="Late", identity=ALICE, source="rivers")
                hits = await store.search("longest river", collection="Late", identity=ALICE, k=1)
                assert [hit.source for hit in hits] == ["rivers"]
        finally:
            await starting
            await asyncio.to_thread(late.stop)

    asyncio.run(scenario())
