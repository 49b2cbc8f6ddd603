"""`--embedding_server`: the OpenAI-compatible `/v1/embeddings` client.

The server here is a small real embedding server on loopback (MiniLM on numpy behind the
OpenAI wire format, as TEI or vLLM would serve it), so the vectors that come back are checked
against the in-process model.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from h2ogpt_api.retrieval.base import DocumentError
from h2ogpt_api.retrieval.embeddings import EndpointEmbedder, MiniLMEmbedder, load_embedder

from tests.support.loopback_http import serve_on_loopback

SERVED_MODEL = "served/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def local() -> MiniLMEmbedder:
    embedder = load_embedder()
    assert isinstance(embedder, MiniLMEmbedder)
    return embedder


@pytest.fixture(scope="module")
def embedding_server(local: MiniLMEmbedder) -> Iterator[tuple[str, list[int]]]:
    batch_sizes: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": SERVED_MODEL, "object": "model"}]})
            else:
                self.reply(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/embeddings" or request.get("model") != SERVED_MODEL:
                self.reply(400, {"error": {"message": f"unknown model {request.get('model')!r}"}})
                return
            texts = request["input"]
            batch_sizes.append(len(texts))
            vectors = local.embed_sync(texts).tolist()
            self.reply(200, {"object": "list", "model": SERVED_MODEL, "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]})

    with serve_on_loopback(Handler) as url:
        yield url, batch_sizes


def test_endpoint_reports_its_model_and_dimension(embedding_server: tuple[str, list[int]]) -> None:
    url, _ = embedding_server
    for configured in (url, f"{url}/v1", f"{url}/v1/"):
        embedder = load_embedder(configured)
        assert isinstance(embedder, EndpointEmbedder)
        assert (embedder.model_name, embedder.dimension) == (SERVED_MODEL, 384)


def test_endpoint_vectors_equal_the_local_model_in_order(embedding_server: tuple[str, list[int]],
                                                         local: MiniLMEmbedder) -> None:
    url, batch_sizes = embedding_server
    texts = [f"document number {i} is about topic {i % 7}" for i in range(40)]
    embedder = load_embedder(url)  # its one-text probe request happens here
    batch_sizes.clear()
    vectors = asyncio.run(embedder.embed(texts))
    assert batch_sizes == [32, 8]  # sent in batches, not one request per text
    assert np.abs(np.array(vectors) - local.embed_sync(texts)).max() < 1e-6


def test_unreachable_endpoint_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DocumentError, match=rf"embedding server http://127.0.0.1:{port} is unreachable"):
        load_embedder(f"http://127.0.0.1:{port}")


def test_a_configured_model_name_is_the_one_sent(embedding_server: tuple[str, list[int]]) -> None:
    url, _ = embedding_server
    assert load_embedder(url, model=SERVED_MODEL).model_name == SERVED_MODEL
    # The server refuses any other name: the configured one is sent, not the listed one.
    with pytest.raises(DocumentError, match="unknown model 'another/model'"):
        load_embedder(url, model="another/model")
