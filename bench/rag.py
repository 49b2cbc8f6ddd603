"""RAG benchmark: ingestion rate and search latency on a real Weaviate with real MiniLM embeddings.

The corpus is generated (seeded, so every run ingests the same bytes): a PDF of `PDF_PAGES`
pages written with fpdf2 and a plain-text file of `TEXT_PAGES` pages' worth of text. Both are
ingested through the document store the API uses (`open_document_store`, which starts its own
local weaviate-server), then `QUERIES` searches run with k=3 and with k=10.

Where the time goes is measured, not guessed: the embedder handed to the store is the real
MiniLM model wrapped in a stopwatch, text extraction and chunking are timed by running the
same pure functions the store runs, and what is left of each ingestion is Weaviate (the
existence check that de-duplicates, the batch insert, and the stale-chunk scan).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from h2ogpt_api.retrieval.base import Embedder, Identity
from h2ogpt_api.retrieval.embeddings import MiniLMEmbedder, load_embedder, minilm_model_dir
from h2ogpt_api.retrieval.ingest import chunk_document, chunk_text, load_file
from h2ogpt_api.retrieval.store import open_document_store

from bench.common import (
    REPO_ROOT,
    LatencySummary,
    Stopwatch,
    bench_main,
    markdown_table,
    median,
    ms,
    package_versions,
    secs,
    share,
)

TITLE = "Document Q&A (RAG): ingestion and search"
SEED = 20240611
PDF_PAGES = 200
TEXT_PAGES = 100
QUICK_PDF_PAGES = 20
QUICK_TEXT_PAGES = 10
QUERIES = 100
QUICK_QUERIES = 20
WARMUP_QUERIES = 5
K_VALUES = (3, 10)
CHUNK_SIZE = 512  # characters: the API's default chunk_size
PROBE_CHUNKS = 64
PROBE_QUESTIONS = 20
PROBE_ROUNDS = 2
QUICK_PROBE_ROUNDS = 1
PROBE_CODE = "from bench.rag import print_embedding_probe; print_embedding_probe()"
# numpy's BLAS (OpenBLAS) reads its thread count once, at start: each variant is a process.
BLAS_VARIANTS = {"default threads": {}, "one thread (OPENBLAS_NUM_THREADS=1)": {"OPENBLAS_NUM_THREADS": "1"}}
COLLECTION = "UserData"
# About the text of a printed page of prose in 11-point type.
PAGE_CHARS = 1800

# ---------------------------------------------------------------------------------------------
# A deterministic corpus
# ---------------------------------------------------------------------------------------------

TOPICS = [
    ("river", "sediment", "delta", "flood", "estuary"),
    ("orchard", "pruning", "blossom", "graft", "harvest"),
    ("railway", "signal", "junction", "timetable", "locomotive"),
    ("glacier", "moraine", "crevasse", "meltwater", "ice core"),
    ("bakery", "sourdough", "oven", "proofing", "flour"),
    ("observatory", "telescope", "nebula", "parallax", "eclipse"),
    ("harbour", "tide", "pier", "dredging", "cargo"),
    ("library", "catalogue", "archive", "manuscript", "lending"),
    ("vineyard", "terroir", "fermentation", "cask", "vintage"),
    ("turbine", "blade", "gearbox", "wind farm", "output"),
    ("beehive", "queen", "pollen", "swarm", "honeycomb"),
    ("bridge", "truss", "suspension", "load test", "cable"),
    ("forest", "canopy", "undergrowth", "lichen", "seedling"),
    ("clinic", "vaccine", "triage", "ward", "dosage"),
    ("reservoir", "dam", "spillway", "aquifer", "drought"),
    ("textile mill", "loom", "spindle", "dye", "weave"),
]
PLACES = ["Northbrook", "Alderney Vale", "Port Ellis", "Kestrel Ridge", "Marrow Fen", "Highcombe",
          "Saltmarsh", "Wyvern Hollow", "Oakhurst", "Lindqvist Bay", "Caldera Point", "Ferrow"]
VERBS = ["recorded", "measured", "reported", "observed", "estimated", "documented", "surveyed"]
ADJECTIVES = ["seasonal", "annual", "unexpected", "gradual", "sharp", "steady", "marked", "modest"]
CONNECTIVES = ["Meanwhile", "In contrast", "As a result", "By comparison", "Later that season",
               "According to the survey", "In the following year", "Separately"]


@dataclass(frozen=True)
class GeneratedPage:
    number: int
    text: str
    # A question whose answer is on this page (its unique fact), to check retrieval is sane.
    question: str


def _sentence(rng: random.Random, topic: tuple[str, ...]) -> str:
    subject, *terms = topic
    return (f"{rng.choice(CONNECTIVES)}, the {rng.choice(ADJECTIVES)} {rng.choice(terms)} near the "
            f"{subject} at {rng.choice(PLACES)} was {rng.choice(VERBS)} at {rng.randint(3, 997)} units, "
            f"which the team linked to the {rng.choice(terms)} of the previous "
            f"{rng.choice(['month', 'year', 'decade'])}.")


def generate_pages(count: int, seed: int, label: str) -> list[GeneratedPage]:
    """`count` pages of prose about rotating topics, each with one fact found nowhere else
    (its site code carries `label` and the page number)."""
    rng = random.Random(seed)
    pages: list[GeneratedPage] = []
    for number in range(1, count + 1):
        topic = TOPICS[(number - 1) % len(TOPICS)]
        code = f"{label}-{number:03d}-{rng.choice(PLACES).split()[0]}"
        fact = (f"The inspection log for site {code} states that the {topic[0]} "
                f"{topic[2]} held {rng.randint(1000, 9999)} litres on the day of the inspection.")
        paragraphs = [f"Chapter {number}: the {topic[0]} and its {topic[1]}"]
        body: list[str] = []
        while sum(map(len, body)) < PAGE_CHARS - len(fact):
            body.append(_sentence(rng, topic))
        body.insert(rng.randint(0, len(body)), fact)
        # Paragraphs of about four sentences, as prose has.
        paragraphs.extend(" ".join(body[i:i + 4]) for i in range(0, len(body), 4))
        question = f"What did the inspection log for site {code} say about the {topic[0]} {topic[2]}?"
        pages.append(GeneratedPage(number, "\n\n".join(paragraphs), question))
    return pages


def write_pdf(pages: list[GeneratedPage], path: Path) -> None:
    from fpdf import FPDF  # noqa: PLC0415

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=False)  # one generated page is one PDF page
    pdf.set_font("Helvetica", size=10)
    for page in pages:
        pdf.add_page()
        pdf.multi_cell(0, 4.5, page.text)
    pdf.output(str(path))


def write_text(pages: list[GeneratedPage], path: Path) -> None:
    path.write_text("\n\n".join(page.text for page in pages) + "\n")


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


class TimedEmbedder:
    """The real embedder, with a stopwatch around each call (the store sees the same interface)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.model_name = self.inner.model_name
        self.dimension = self.inner.dimension
        self.stopwatch = Stopwatch()
        self.texts = 0

    async def embed(self, texts: list[str]) -> list[list[float]]:
        with self.stopwatch:
            vectors = await self.inner.embed(texts)
        self.texts += len(texts)
        return vectors


@dataclass
class IngestRow:
    name: str
    kind: str
    pages: int
    chars: int
    chunks: int
    seconds: float
    parse_seconds: float
    embed_seconds: float

    @property
    def weaviate_seconds(self) -> float:
        return max(0.0, self.seconds - self.parse_seconds - self.embed_seconds)


@dataclass
class QueryRun:
    k: int
    totals: list[float] = field(default_factory=list)
    embeds: list[float] = field(default_factory=list)
    hits_per_query: list[int] = field(default_factory=list)
    right_page_in_top_k: int = 0


@dataclass
class RagResults:
    startup_model_s: float
    startup_weaviate_s: float
    weaviate_version: str
    ingests: list[IngestRow]
    reingest_s: float
    reingest_chunks: int
    queries: list[QueryRun]
    embedding_runtime: str = "numpy"


def _parse_and_chunk(path: Path) -> tuple[float, int, int, int]:
    """Seconds the store's own extraction and chunking take for `path`, and pages/chars/chunks."""
    started = time.perf_counter()
    document = load_file(path)
    chunks = chunk_document(document, CHUNK_SIZE)
    elapsed = time.perf_counter() - started
    return elapsed, len(document.pages), sum(len(p.text) for p in document.pages), len(chunks)


async def _measure(pdf_path: Path, txt_path: Path, pages: list[GeneratedPage], queries: int,
                   save_dir: Path) -> RagResults:
    started = time.perf_counter()
    embedder = TimedEmbedder(await asyncio.to_thread(load_embedder, ""))
    model_s = time.perf_counter() - started
    identity = Identity("bench")
    started = time.perf_counter()
    async with open_document_store(weaviate_url="", weaviate_api_key="", save_dir=save_dir,
                                   embedding_server="", collections=[COLLECTION],
                                   embedder=embedder) as store:
        weaviate_s = time.perf_counter() - started
        assert store.local_weaviate is not None
        async with httpx.AsyncClient() as client:
            meta = (await client.get(store.local_weaviate.http_url + "/v1/meta")).json()
        # One tiny document first, so the collection exists and every code path is warm.
        await store.add_text("warm-up text for the benchmark", collection=COLLECTION, identity=identity,
                             source="warmup.txt")
        ingests = []
        for path in (pdf_path, txt_path):
            # Twice, keeping the second: the first also pays one-off imports (pypdf).
            await asyncio.to_thread(_parse_and_chunk, path)
            parse_s, page_count, chars, chunk_count = await asyncio.to_thread(_parse_and_chunk, path)
            embed_before = embedder.stopwatch.total
            started = time.perf_counter()
            added = await store.add_file(str(path), collection=COLLECTION, identity=identity,
                                         chunk_size=CHUNK_SIZE)
            elapsed = time.perf_counter() - started
            if added.chunks_added != chunk_count:
                raise RuntimeError(f"{path.name}: stored {added.chunks_added} chunks, expected {chunk_count}")
            ingests.append(IngestRow(path.name, path.suffix.lstrip("."),
                                     page_count if path.suffix == ".pdf" else 0, chars, chunk_count,
                                     elapsed, parse_s, embedder.stopwatch.total - embed_before))
        # Adding an unchanged document again stores nothing: this is the de-duplication cost.
        started = time.perf_counter()
        again = await store.add_file(str(pdf_path), collection=COLLECTION, identity=identity,
                                     chunk_size=CHUNK_SIZE)
        reingest_s = time.perf_counter() - started

        for page in pages[:WARMUP_QUERIES]:
            await store.search(page.question, collection=COLLECTION, identity=identity, k=3)
        runs = []
        for k in K_VALUES:
            run = QueryRun(k)
            for index in range(queries):
                page = pages[(index * 7) % len(pages)]  # spread over the whole PDF
                embed_calls = embedder.stopwatch.calls
                started = time.perf_counter()
                hits = await store.search(page.question, collection=COLLECTION, identity=identity, k=k)
                run.totals.append(time.perf_counter() - started)
                run.embeds.extend(embedder.stopwatch.samples[embed_calls:])
                run.hits_per_query.append(len(hits))
                run.right_page_in_top_k += any(h.source == pdf_path.name and h.page == page.number
                                               for h in hits)
            runs.append(run)
    runtime = embedder.inner.runtime if isinstance(embedder.inner, MiniLMEmbedder) else "an endpoint"
    return RagResults(model_s, weaviate_s, str(meta.get("version", "unknown")), ingests, reingest_s,
                      again.duplicate_chunks_skipped, runs, runtime)


def print_embedding_probe() -> None:
    """Run in a child process (its BLAS thread count is fixed at start): embedding rates as JSON,
    on the numpy runtime (the one whose speed OPENBLAS_NUM_THREADS sets)."""
    embedder = MiniLMEmbedder(minilm_model_dir(), runtime="numpy")
    pages = generate_pages(PROBE_CHUNKS // 4, SEED + 2, "PR")
    chunks = [chunk for page in pages for chunk in chunk_text(page.text, CHUNK_SIZE)][:PROBE_CHUNKS]
    embedder.embed_sync(chunks[:8])
    started = time.perf_counter()
    embedder.embed_sync(chunks)
    batch_s = time.perf_counter() - started
    questions = []
    for page in pages[:PROBE_QUESTIONS]:
        started = time.perf_counter()
        embedder.embed_sync([page.question])
        questions.append(time.perf_counter() - started)
    print(json.dumps({"chunks_per_s": len(chunks) / batch_s, "question_p50_s": median(questions)}))


def embedding_thread_probe(rounds: int) -> dict[str, tuple[float, float]]:
    """The same embedding work with numpy's BLAS on its default threads and on one thread,
    alternated `rounds` times: (chunks/s, question p50 s) for each, medians over rounds."""
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in BLAS_VARIANTS}
    for _ in range(rounds):
        for label, env in BLAS_VARIANTS.items():
            output = subprocess.run(
                [sys.executable, "-c", PROBE_CODE],
                cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=True,
                timeout=300).stdout
            samples[label].append(json.loads(output.strip().splitlines()[-1]))
    return {label: (median([x["chunks_per_s"] for x in runs]), median([x["question_p50_s"] for x in runs]))
            for label, runs in samples.items()}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def render(results: RagResults, probe: dict[str, tuple[float, float]], *, pdf_pages: int, text_pages: int,
           queries: int, quick: bool) -> str:
    versions = package_versions(["weaviate-client", "numpy", "tokenizers", "pypdf", "fpdf2"])
    ingest_rows = []
    for row in results.ingests:
        ingest_rows.append([
            f"{row.name} ({row.pages} pages)" if row.pages else f"{row.name} ({row.chars // 1000} k chars)",
            row.chunks, secs(row.seconds), f"{row.chunks / row.seconds:.1f}",
            f"{row.pages / row.seconds:.2f}" if row.pages else "-",
            f"{row.chars / 1000 / row.seconds:.1f}",
        ])
    total_chunks = sum(r.chunks for r in results.ingests)
    total_s = sum(r.seconds for r in results.ingests)
    ingest_rows.append(["**all**", total_chunks, secs(total_s), f"{total_chunks / total_s:.1f}", "-",
                        f"{sum(r.chars for r in results.ingests) / 1000 / total_s:.1f}"])
    where_rows = [[row.name, secs(row.seconds),
                   f"{secs(row.parse_seconds)} ({share(row.parse_seconds, row.seconds)})",
                   f"{secs(row.embed_seconds)} ({share(row.embed_seconds, row.seconds)})",
                   f"{secs(row.weaviate_seconds)} ({share(row.weaviate_seconds, row.seconds)})"]
                  for row in results.ingests]
    embed_s = sum(r.embed_seconds for r in results.ingests)
    query_rows = []
    for run in results.queries:
        total, embed = LatencySummary.of(run.totals), LatencySummary.of(run.embeds)
        weaviate = LatencySummary.of([t - e for t, e in zip(run.totals, run.embeds, strict=True)])
        query_rows.append([f"k={run.k}", total.count, ms(total.p50), ms(total.p95), ms(total.mean),
                           ms(embed.p50), ms(weaviate.p50), ms(weaviate.p95),
                           f"{run.right_page_in_top_k}/{total.count}"])
    embed_rate = total_chunks / embed_s if embed_s > 0 else float("nan")
    probe_rows = [[label, f"{rate:.1f}", ms(question_s)] for label, (rate, question_s) in probe.items()]
    mode = " (quick mode: small corpus)" if quick else ""
    return f"""## {TITLE}

What a user of document Q&A waits for: adding documents (ingestion rate) and each question's
retrieval step (search latency, before the LLM is called). Real components end to end: the
store the API uses (`h2ogpt_api.retrieval.store`), a local weaviate-server {results.weaviate_version}
started by it, MiniLM-L6-v2 embeddings computed in-process on {results.embedding_runtime} (the API's
default: ONNX Runtime when the `onnx` extra is installed, else numpy; `bench.embeddings` compares
the two), `chunk_size` {CHUNK_SIZE}.
Corpus{mode}: generated and seeded (identical every run): a {pdf_pages}-page PDF (fpdf2) and
{text_pages} pages' worth of plain text; {queries} searches per k (hybrid, alpha 0.75), after
{WARMUP_QUERIES} warm-up searches.
Start-up: loading the embedding model {secs(results.startup_model_s)} s, starting Weaviate
{secs(results.startup_weaviate_s)} s.

### Ingestion

{markdown_table(["document", "chunks", "seconds", "chunks/s", "pages/s", "k chars/s"], ingest_rows)}

Where the ingestion time goes (extraction and chunking timed by running the store's own
functions; embedding timed around the real model's calls; Weaviate is the rest: the
de-duplication lookup, the batch insert and the stale-chunk scan):

{markdown_table(["document", "total s", "extract + chunk", "embed (MiniLM)", "Weaviate"], where_rows)}

Embedding alone runs at {embed_rate:.1f} chunks/s on this machine: it is
{share(embed_s, total_s)} of ingestion time, so ingestion scales with embedding compute. To
ingest faster, point `--embedding_server` at a TEI/vLLM embedding service (a GPU does
thousands of chunks/s) rather than scaling Weaviate. Adding the unchanged PDF again
({results.reingest_chunks} chunks, all recognised as duplicates, nothing embedded) took
{secs(results.reingest_s)} s.

On the numpy runtime, the model's matrix products run on numpy's BLAS, which uses every core
by default. The same
{PROBE_CHUNKS} chunks and {PROBE_QUESTIONS} single questions embedded in fresh processes, alternated
{QUICK_PROBE_ROUNDS if quick else PROBE_ROUNDS} time(s), medians shown:

{markdown_table(["BLAS threads", "chunks/s", "one question p50 (ms)"], probe_rows)}

When the cores are busy with other work (as on this shared machine: see the load average),
BLAS threads wait for each other and one thread can be the faster setting. Which setting wins
depends on how busy the node's cores are: measure on the target node before setting
`OPENBLAS_NUM_THREADS` for the API pods.

### Search latency (ms)

{markdown_table(["search", "queries", "p50", "p95", "mean", "embed p50", "Weaviate p50",
                 "Weaviate p95", "source page in top k"], query_rows)}

"Embed" is the question's embedding; "Weaviate" is the hybrid query (BM25 + vector) and
fetching the chunks. Searches run one at a time, so p95 mostly shows the other work on this
shared machine; p50 is the number to compare. The last column checks that retrieval is real:
each question asks for a fact found on one page only, and the column counts the searches
whose results include that page.

Versions: {", ".join(f"{k} {v}" for k, v in versions.items())}.
Command: `.venv/bin/python -m bench.rag{" --quick" if quick else ""}`.
"""


def run(quick: bool = False) -> str:
    pdf_pages = QUICK_PDF_PAGES if quick else PDF_PAGES
    text_pages = QUICK_TEXT_PAGES if quick else TEXT_PAGES
    queries = QUICK_QUERIES if quick else QUERIES
    pages = generate_pages(pdf_pages, SEED, "HB")
    with tempfile.TemporaryDirectory(prefix="bench-rag-") as work:
        work_dir = Path(work)
        pdf_path, txt_path = work_dir / "handbook.pdf", work_dir / "notes.txt"
        write_pdf(pages, pdf_path)
        write_text(generate_pages(text_pages, SEED + 1, "NT"), txt_path)
        results = asyncio.run(_measure(pdf_path, txt_path, pages, queries, work_dir / "save"))
    probe = embedding_thread_probe(QUICK_PROBE_ROUNDS if quick else PROBE_ROUNDS)
    return render(results, probe, pdf_pages=pdf_pages, text_pages=text_pages, queries=queries, quick=quick)


if __name__ == "__main__":
    bench_main(run)
