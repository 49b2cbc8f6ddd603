"""`/v1/embeddings` with the official client: MiniLM in-process, float and base64 encodings."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import pytest
from openai import OpenAI

from tests.support.api_server import ApiServer, ApiServerFactory
from tests.support.tgi_fake import RunningFake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(api_server_factory: ApiServerFactory, tgi_fake: RunningFake) -> ApiServer:
    return api_server_factory(["--inference_server", tgi_fake.url, "--langchain_modes", "['LLM']"])


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_embeddings_are_real_sentence_vectors(server: ApiServer) -> None:
    client = OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0)
    texts = ["The cat sat on the mat.", "A kitten is resting on a rug.", "Quarterly revenue grew by 8%."]
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    vectors = [item.embedding for item in result.data]
    assert [item.index for item in result.data] == [0, 1, 2]
    assert {len(vector) for vector in vectors} == {384}
    # Meaning, not chance: the two cat sentences are closer to each other than to finance.
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_float_and_base64_encodings_agree(server: ApiServer) -> None:
    url = f"{server.openai_url}/embeddings"
    as_float = httpx.post(url, json={"input": "hello world", "encoding_format": "float"}, timeout=60).json()
    as_base64 = OpenAI(base_url=server.openai_url, api_key="EMPTY").embeddings.create(
        model="x", input="hello world", encoding_format="base64"
    )
    decoded = as_base64.data[0].embedding
    assert isinstance(decoded, list | str)
    if isinstance(decoded, str):  # asked for explicitly, the client hands back the base64 text as is
        raw = base64.b64decode(decoded)
        decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert decoded == pytest.approx(as_float["data"][0]["embedding"], abs=1e-6)


def test_empty_input_is_400(server: ApiServer) -> None:
    response = httpx.post(f"{server.openai_url}/embeddings", json={"input": []}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
