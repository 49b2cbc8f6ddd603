"""all-MiniLM-L6-v2 in-process: checked against the model's published reference similarities, and
the ONNX Runtime graph (the default runtime) against the numpy implementation, vector for vector."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from h2ogpt_api.retrieval.embeddings import (
    MINILM_MODEL_NAME,
    MiniLMEmbedder,
    _gelu,
    load_embedder,
    minilm_model_dir,
)
from h2ogpt_api.retrieval.ingest import chunk_text

from bench.rag import CHUNK_SIZE, SEED, generate_pages

# "Same vectors to 4 decimals": the largest difference allowed in any component of any vector.
RUNTIME_AGREEMENT = 5e-5


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    loaded = load_embedder()
    assert isinstance(loaded, MiniLMEmbedder)
    return loaded


@pytest.fixture(scope="module")
def numpy_reference() -> MiniLMEmbedder:
    return MiniLMEmbedder(minilm_model_dir(), runtime="numpy")


def test_identity(embedder: MiniLMEmbedder) -> None:
    assert embedder.model_name == MINILM_MODEL_NAME
    # The dev install has the `onnx` extra, so the default is the ONNX Runtime graph.
    assert embedder.runtime == "onnx"
    assert embedder.dimension == 384
    assert load_embedder() is embedder  # the weights are loaded once per process


def test_matches_published_reference_similarities(embedder: MiniLMEmbedder) -> None:
    # The similarity matrix that sentence-transformers' README prints for these three sentences
    # with all-MiniLM-L6-v2 (torch, reference implementation): 0.6660, 0.1046, 0.1411.
    vectors = embedder.embed_sync(["The weather is lovely today.", "It's so sunny outside!",
                                   "He drove to the stadium."])
    similarity = vectors @ vectors.T
    assert similarity[0, 1] == pytest.approx(0.6660, abs=6e-4)
    assert similarity[0, 2] == pytest.approx(0.1046, abs=6e-4)
    assert similarity[1, 2] == pytest.approx(0.1411, abs=6e-4)
    assert np.diag(similarity) == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)


def test_related_sentences_score_clearly_higher(embedder: MiniLMEmbedder) -> None:
    query, related, unrelated = embedder.embed_sync([
        "How do I reset my password?",
        "To change a forgotten password, click 'Forgot password' on the login page.",
        "The recipe needs two cups of flour and an egg.",
    ])
    assert float(query @ related) > float(query @ unrelated) + 0.3


def test_batching_and_padding_do_not_change_results(embedder: MiniLMEmbedder) -> None:
    texts = [f"short text {i}" for i in range(40)] + ["a much longer text " * 30]
    together = embedder.embed_sync(texts)
    for i in (0, 39, 40):
        alone = embedder.embed_sync([texts[i]])[0]
        assert np.abs(alone - together[i]).max() < 1e-5
    assert np.linalg.norm(together, axis=1) == pytest.approx([1.0] * len(texts), abs=1e-5)


def test_long_text_is_truncated_not_refused(embedder: MiniLMEmbedder) -> None:
    head = "Rivers carry water to the sea. " * 60  # far more than 256 word pieces
    long_vector, head_vector = embedder.embed_sync([head + "Mountains are tall.", head])
    assert float(long_vector @ head_vector) == pytest.approx(1.0, abs=1e-5)


def test_truncation_is_at_256_word_pieces_not_the_tokenizer_files_128(embedder: MiniLMEmbedder) -> None:
    words = [f"topic{i}" for i in range(300)]
    ids = embedder.tokenizer.encode(" ".join(words)).ids
    assert len(ids) == 256
    prefix = embedder.tokenizer.decode(ids[1:150])  # about 150 word pieces: past 128, within 256
    full_vector, prefix_vector = embedder.embed_sync([" ".join(words), prefix])
    assert float(full_vector @ prefix_vector) < 0.999


def test_async_embed_returns_plain_lists(embedder: MiniLMEmbedder) -> None:
    vectors = asyncio.run(embedder.embed(["one", "two"]))
    assert len(vectors) == 2
    assert all(isinstance(x, float) for x in vectors[0])
    assert len(vectors[0]) == 384
    assert asyncio.run(embedder.embed([])) == []


def test_gelu_is_the_exact_erf_form() -> None:
    x = np.linspace(-6, 6, 241, dtype=np.float32)
    expected = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()]
    assert _gelu(x.copy()).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow  # the numpy reference embeds about 80 texts
def test_onnx_runtime_gives_the_numpy_vectors_on_a_realistic_corpus(
        embedder: MiniLMEmbedder, numpy_reference: MiniLMEmbedder) -> None:
    # The chunks the RAG benchmark ingests (generated prose cut by the store's own chunker), plus
    # the edge cases: an empty text, a single word, and one past the 256 word-piece truncation.
    pages = generate_pages(12, SEED, "T")
    chunks = [chunk for page in pages for chunk in chunk_text(page.text, CHUNK_SIZE)]
    texts = [*chunks, *(page.question for page in pages), "", "river", "flood " * 400]
    assert len(texts) > 60
    onnx_vectors = embedder.embed_sync(texts)
    numpy_vectors = numpy_reference.embed_sync(texts)
    assert onnx_vectors.shape == numpy_vectors.shape == (len(texts), 384)
    assert float(np.abs(onnx_vectors - numpy_vectors).max()) < RUNTIME_AGREEMENT


def test_onnx_token_embeddings_match_numpy_with_padding(
        embedder: MiniLMEmbedder, numpy_reference: MiniLMEmbedder) -> None:
    # The encoders' own output, before pooling, on a padded batch: padded rows must not leak.
    input_ids = np.array([[101, 2054, 2003, 1037, 3899, 102], [101, 7592, 102, 0, 0, 0]], dtype=np.int64)
    attention_mask = (input_ids != 0).astype(np.int64)
    onnx_hidden = embedder.encoder.forward(input_ids, attention_mask)
    numpy_hidden = numpy_reference.encoder.forward(input_ids, attention_mask)
    real = attention_mask.astype(bool)
    assert float(np.abs(onnx_hidden[real] - numpy_hidden[real]).max()) < RUNTIME_AGREEMENT


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="embedding runtime must be one of onnx, numpy, not 'torch'"):
        MiniLMEmbedder(minilm_model_dir(), runtime="torch")  # type: ignore[arg-type]
