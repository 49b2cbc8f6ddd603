"""Retrieval quality before and after token-measured chunks and main-content extraction.

One seeded corpus of generated web pages, each an article (prose about one topic with one fact
found nowhere else) wrapped in what real pages carry: a cookie banner, a menu naming every
topic, a "related articles" sidebar quoting the facts of other pages, and a footer. Each page
gets one question about its fact, phrased without the page's name. The pages are ingested into
one real Weaviate, with real MiniLM embeddings, by two pipelines side by side:

- **before**: all visible text of the page (`ingest.visible_text`) cut by the character chunker
  this project used until issue 15 (kept below, verbatim, so both run in one process);
- **after**: the store's own ingestion (`add_file`): trafilatura's main content, cut by
  semantic-text-splitter in characters and in MiniLM's word pieces (never over 256).

Each runs at the API's default `chunk_size` (512 characters) and at a large one (2000, where
old chunks ran past what MiniLM reads). The score is the share of questions whose source page
is among the top k results of the store's hybrid search, the search the API answers with.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

from h2ogpt_api.retrieval.base import Embedder, Identity, TokenWindow, token_window_of
from h2ogpt_api.retrieval.embeddings import load_embedder
from h2ogpt_api.retrieval.ingest import (
    Chunk,
    LoadedDocument,
    validate_chunk_size,
    visible_text,
)
from h2ogpt_api.retrieval.store import WeaviateDocumentStore, open_document_store

from bench.common import bench_main, markdown_table, package_versions, secs
from bench.rag import PLACES, TOPICS, _sentence

TITLE = "Retrieval quality: token-measured chunks and main-content extraction"
SEED = 20261130
PAGES = 32
QUICK_PAGES = 16
CHUNK_SIZES = (512, 2000)
K_VALUES = (1, 3, 5)
ARTICLE_PARAGRAPHS = 6
RELATED_LINKS = 4
IDENTITY = Identity("bench")

# ---------------------------------------------------------------------------------------------
# The chunker before issue 15 item 6 (characters only), verbatim, for the side-by-side run
# ---------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def _split_long(text: str, limit: int) -> list[str]:
    pieces: list[str] = []
    current = ""
    for whole_word in text.split():
        word = whole_word
        while len(word) > limit:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:limit])
            word = word[limit:]
        if current and len(current) + 1 + len(word) > limit:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


def _units(text: str, limit: int) -> list[tuple[str, str]]:
    units: list[tuple[str, str]] = []
    for raw_paragraph in re.split(r"\n\s*\n", text):
        paragraph = raw_paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= limit:
            units.append((paragraph, "\n\n"))
            continue
        separator = "\n\n"
        for sentence in _SENTENCE_END.split(paragraph):
            for piece in [sentence] if len(sentence) <= limit else _split_long(sentence, limit):
                units.append((piece, separator))
                separator = " "
    return units


def _overlap_tail(chunk: str, overlap: int) -> str:
    if overlap <= 0 or len(chunk) <= overlap:
        return ""
    tail = chunk[-overlap:]
    space = tail.find(" ")
    return tail[space + 1:] if space >= 0 else ""


def character_chunks(text: str, chunk_size: int) -> list[str]:
    """The character chunker `ingest.chunk_text` was before issue 15 item 6."""
    validate_chunk_size(chunk_size)
    overlap = chunk_size // 10
    chunks: list[str] = []
    current = ""
    for unit, separator in _units(text, chunk_size):
        if current and len(current) + len(separator) + len(unit) <= chunk_size:
            current = f"{current}{separator}{unit}"
            continue
        if current:
            chunks.append(current)
            tail = _overlap_tail(current, overlap)
            current = f"{tail} {unit}" if tail and len(tail) + 1 + len(unit) <= chunk_size else unit
        else:
            current = unit
    if current:
        chunks.append(current)
    return chunks


class CharacterChunkStore(WeaviateDocumentStore):
    """The real store with the old chunker: everything else (embedding, Weaviate, search) is shared."""

    def chunks_of(self, document: LoadedDocument, chunk_size: int) -> list[Chunk]:
        chunks: list[Chunk] = []
        for page in document.pages:
            for content in character_chunks(page.text, chunk_size):
                chunks.append(Chunk(document.source, content, len(chunks), page.number))
        return chunks


# ---------------------------------------------------------------------------------------------
# A generated web site
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebPage:
    name: str
    html: str
    fact: str
    question: str


def _fact(rng: random.Random, topic: tuple[str, ...], place: str) -> tuple[str, str]:
    subject, _, term, *_ = topic
    litres = rng.randint(1000, 9999)
    fact = (f"The inspection at {place} found that the {subject} {term} held {litres} litres of water "
            "on the morning of the survey.")
    question = f"How many litres did the {subject} {term} at {place} hold when it was inspected?"
    return fact, question


def generate_site(count: int, seed: int) -> list[WebPage]:
    """`count` pages; page i is about topic i mod 16 at a place chosen so no two pages share both."""
    rng = random.Random(seed)
    plans = []
    for index in range(count):
        topic = TOPICS[index % len(TOPICS)]
        place = PLACES[(index // len(TOPICS) + index) % len(PLACES)]
        fact, question = _fact(rng, topic, place)
        paragraphs = [" ".join(_sentence(rng, topic) for _ in range(4)) for _ in range(ARTICLE_PARAGRAPHS)]
        paragraphs.insert(rng.randint(1, len(paragraphs)), fact)  # anywhere after the opening
        plans.append((f"page-{index:03d}.html", topic, place, paragraphs, fact, question))
    menu = "".join(f'<li><a href="/{t[0].replace(" ", "-")}">{escape(t[0].title())}</a></li>' for t in TOPICS)
    pages = []
    for index, (name, topic, place, paragraphs, fact, question) in enumerate(plans):
        related = [plans[(index + step * 5) % count] for step in range(1, RELATED_LINKS + 1)]
        sidebar = "".join(
            f'<li><a href="/{other[0]}">{escape(other[1][0].title())} at {escape(other[2])}</a>'
            f"<p>{escape(other[4])}</p></li>" for other in related)
        article = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
        html = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>{escape(topic[0].title())} at {escape(place)} | Field Notes</title></head><body>
<div id="cookie-banner" class="cookie-consent"><p>We use cookies to measure visits and remember your
preferences. By continuing you accept our use of cookies.</p><button>Accept all</button>
<button>Manage settings</button></div>
<header><a href="/">Field Notes</a><nav class="menu"><ul>{menu}</ul></nav></header>
<main><article><h1>The {escape(topic[0])} at {escape(place)}</h1>{article}</article></main>
<aside class="related"><h2>Related articles</h2><ul>{sidebar}</ul></aside>
<footer><p>Field Notes is a survey journal. Copyright 2026. All rights reserved.</p>
<ul><li><a href="/privacy">Privacy policy</a></li><li><a href="/terms">Terms of use</a></li>
<li><a href="/contact">Contact the editors</a></li></ul></footer></body></html>"""
        pages.append(WebPage(name, html, fact, question))
    return pages


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


@dataclass
class PipelineResult:
    pipeline: str
    chunk_size: int
    chunks: int
    over_window: int  # chunks longer than MiniLM reads: their tail is never embedded
    fact_unseen: int  # pages whose fact lies only in chunk text past the window
    seconds: float
    hits: dict[int, int]
    questions: int


def _unseen(text: str, fact: str, window: TokenWindow) -> bool:
    """True when `fact` starts in `text` past the tokens the model reads."""
    start = text.find(fact[:40])
    return start >= 0 and window.count(text[:start]) >= window.max_tokens - 2


async def _run_pipeline(store: WeaviateDocumentStore, *, label: str, collection: str, chunk_size: int,
                        pages: list[WebPage], files: dict[str, Path], window: TokenWindow,
                        before: bool) -> PipelineResult:
    started = time.perf_counter()
    for page in pages:
        if before:
            await store.add_text(visible_text(page.html), collection=collection, identity=IDENTITY,
                                 source=page.name, chunk_size=chunk_size)
        else:
            await store.add_file(str(files[page.name]), collection=collection, identity=IDENTITY,
                                 chunk_size=chunk_size)
    seconds = time.perf_counter() - started
    _progress(f"{collection}: ingested {len(pages)} pages in {seconds:.0f} s")
    chunks = over = unseen = 0
    for page in pages:
        stored = await store.get_document(page.name, collection=collection, identity=IDENTITY)
        chunks += len(stored)
        over += sum(window.count(hit.content) > window.max_tokens for hit in stored)
        with_fact = [hit.content for hit in stored if page.fact[:40] in hit.content]
        unseen += bool(with_fact) and all(_unseen(text, page.fact, window) for text in with_fact)
    _progress(f"{collection}: {chunks} chunks, {over} over the window")
    hits = dict.fromkeys(K_VALUES, 0)
    for page in pages:
        results = await store.search(page.question, collection=collection, identity=IDENTITY, k=max(K_VALUES))
        sources = [hit.source for hit in results]
        for k in K_VALUES:
            hits[k] += page.name in sources[:k]
    _progress(f"{collection}: searched, {hits}")
    return PipelineResult(label, chunk_size, chunks, over, unseen, seconds, hits, len(pages))


def _progress(message: str) -> None:
    """Progress on stderr (the section goes to stdout): on a busy machine a run takes minutes."""
    print(f"[retrieval_quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _measure(pages: list[WebPage], work: Path) -> list[PipelineResult]:
    files = {}
    for page in pages:
        files[page.name] = work / page.name
        files[page.name].write_text(page.html)
    embedder: Embedder = await asyncio.to_thread(load_embedder, "")
    window = token_window_of(embedder)
    assert window is not None
    collections = [f"{side}{size}" for size in CHUNK_SIZES for side in ("Before", "After")]
    results = []
    async with open_document_store(weaviate_url="", weaviate_api_key="", save_dir=work / "save",
                                   embedding_server="", collections=collections, embedder=embedder) as after:
        before = CharacterChunkStore(after.client, embedder, collections)
        for size in CHUNK_SIZES:
            for label, store in (("before", before), ("after", after)):
                results.append(await _run_pipeline(
                    store, label=label, collection=f"{label.title()}{size}", chunk_size=size, pages=pages,
                    files=files, window=window, before=label == "before"))
    return results


def render(results: list[PipelineResult], pages: int, quick: bool, load: str) -> str:
    rows = []
    for r in results:
        rows.append([f"{r.pipeline}, chunk_size {r.chunk_size}", r.chunks,
                     f"{r.over_window} ({r.over_window / r.chunks:.0%})", f"{r.fact_unseen}/{r.questions}",
                     *[f"{r.hits[k]}/{r.questions} ({r.hits[k] / r.questions:.0%})" for k in K_VALUES],
                     secs(r.seconds)])
    verdicts = []
    met = True
    for size in CHUNK_SIZES:
        old, new = (next(r for r in results if r.chunk_size == size and r.pipeline == side)
                    for side in ("before", "after"))
        change = ", ".join(f"top {k}: {old.hits[k] / old.questions:.0%} -> {new.hits[k] / new.questions:.0%}"
                           for k in K_VALUES)
        verdicts.append(f"- chunk_size {size}: {change}; chunks over the 256-token window "
                        f"{old.over_window} -> {new.over_window}.")
        met = met and new.hits[3] >= old.hits[3] and new.over_window == 0
    versions = package_versions(["semantic-text-splitter", "trafilatura", "tokenizers", "weaviate-client"])
    mode = " (quick mode: small corpus)" if quick else ""
    headers = ["pipeline", "chunks", "chunks over 256 tokens", "fact past the window",
               *[f"source in top {k}" for k in K_VALUES], "ingest s"]
    return f"""## {TITLE}

Does ingestion give retrieval what it needs? One generated web site{mode} of {pages} pages
(seeded: identical every run), each an article with one fact found nowhere else, wrapped in a
cookie banner, a menu, a "related articles" sidebar quoting other pages' facts, and a footer. One
question per page, about its fact, without the page's name. Both pipelines store into one real
Weaviate with real MiniLM-L6-v2 embeddings and are searched by the store's hybrid search (the
API's): **before** = all visible text, cut by the old character chunker; **after** = the store's
ingestion now (trafilatura main content; semantic-text-splitter chunks, at most `chunk_size`
characters and at most the 256 word pieces MiniLM reads).

{markdown_table(headers, rows)}

{chr(10).join(verdicts)}

Target: no chunk over the window, and the share of questions whose page is in the top 3 no
lower than before at either `chunk_size`: **{"met" if met else "missed"}**.

"Chunks over 256 tokens": their tail never reaches the embedding (MiniLM truncates). "Fact past
the window": pages whose fact sits only in chunks, past the part the model reads. What this
corpus does and does not show: its sidebars quote other pages' facts, as "related articles"
boxes do, so all-visible-text ingestion stores each fact on several pages and the right page
loses the top place; main-content extraction removes that. The facts carry place names that the
keyword half of hybrid search matches, so truncated chunks cost little here; with pure vector
search, or questions that share no words with their answer, they would cost more. Ingestion
seconds are for this machine under its load (the load average was {load}) and
compare the pipelines only roughly: both embed on the same CPUs, one after the other.

Versions: {", ".join(f"{k} {v}" for k, v in versions.items())}.
Command: `.venv/bin/python -m bench.retrieval_quality{" --quick" if quick else ""}`.
"""


def run(quick: bool = False) -> str:
    count = QUICK_PAGES if quick else PAGES
    pages = generate_site(count, SEED)
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as work:
        results = asyncio.run(_measure(pages, Path(work)))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return render(results, count, quick, load)


if __name__ == "__main__":
    bench_main(run)
