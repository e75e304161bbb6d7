"""The cross-encoder stage between fusion and generation: reads each (question, chunk) pair together and keeps
the best few, so the one good chunk is not buried in noise.

    from kb.reranking import CrossEncoderReranker
    reranker = CrossEncoderReranker.load("cross-encoder/ms-marco-MiniLM-L-6-v2", top_k=4)
    nodes = reranker.postprocess_nodes(retrieved_nodes, query_str="how do I rotate the API key?")

A LlamaIndex ``BaseNodePostprocessor``: each returned node's score is the cross-encoder's relevance in
0..1 (sigmoid of its logit) and ``node.metadata["retrieval_score"]`` keeps the fused score. Two backends:
``torch`` (``sentence_transformers.CrossEncoder``) and ``onnx`` (the same model exported to ONNX and
int8-quantized by :func:`export_onnx`, run by ONNX Runtime; faster on CPU).

``blend`` < 1 orders by ``blend`` × the cross-encoder logit + (1 − ``blend``) × the fused retrieval score, each
z-scored over the candidates (score interpolation): a small model trained on little data can add its signal to
the retrieval order without replacing it. A model folder may recommend its blend in ``kb-reranker.json``
(``{"blend": 0.6}``); the ``blend`` argument overrides it; 1.0 (cross-encoder order only) otherwise.

:func:`load_reranker` never raises for a missing model: it returns ``None`` and a reason, so kb carries on
without the stage (``Answer.reranked`` is then false and ``kb status`` says why).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from kb.errors import ConfigError, ModelNotAvailableError
from kb.onnx_export import Head, OnnxQuantization, batch_feed, by_length, export_bert, onnx_session
from kb.settings import RerankerBackend

log = logging.getLogger(__name__)
ONNX_FILE = "model-int8.onnx"
CARD_FILE = "kb-reranker.json"


class CrossEncoderReranker(BaseNodePostprocessor):
    """Scores (query, chunk) pairs with a cross-encoder and keeps the ``top_k`` best, best first."""

    model: str = Field(description="Model folder (or hub id) it was loaded from.")
    top_k: int = Field(5, ge=1, description="Chunks kept.")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(256, ge=16, description="Pair length in tokens; longer pairs are truncated.")
    backend: RerankerBackend = RerankerBackend.TORCH
    blend: float = Field(
        1.0, ge=0.0, le=1.0, description="Weight of the cross-encoder in the order; the rest: the retrieval score."
    )
    _scorer: Any = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        return "CrossEncoderReranker"

    @classmethod
    def load(
        cls,
        model: str | Path,
        top_k: int = 5,
        backend: RerankerBackend | str = RerankerBackend.TORCH,
        revision: str | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        blend: float | None = None,
    ) -> CrossEncoderReranker:
        """Load ``model`` (a folder, or a hub id: the local cache first, downloads only when online).

        ``blend`` None: the model folder's recommendation (``kb-reranker.json``), else 1.0."""
        from kb.embedding import resolve_model_path

        path = resolve_model_path(str(model), revision=revision, setting="reranker_model")
        backend = RerankerBackend(backend)
        scorer: _TorchScorer | _OnnxScorer = (
            _OnnxScorer(path, export_onnx(path)) if backend is RerankerBackend.ONNX else _TorchScorer(path)
        )
        length = min(max_length or scorer.max_length, scorer.max_length)
        if blend is None:
            blend = _card(path).get("blend", 1.0)
        reranker = cls(
            model=str(model), top_k=top_k, batch_size=batch_size, max_length=length, backend=backend, blend=blend
        )
        reranker._scorer = scorer
        return reranker

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        """Relevance of each text to ``query`` in 0..1 (sigmoid of the model's logit)."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        return _sigmoid(self._logits(query, texts))

    def rank(
        self, query: str, texts: list[str], k: int, retrieval_scores: list[float] | None = None
    ) -> list[tuple[int, float]]:
        """(index, 0..1 relevance) of the ``k`` best texts, best first (stable for equal scores).

        With ``retrieval_scores`` and ``blend`` < 1 the order mixes in the retrieval score; the relevance
        returned stays the cross-encoder's own (the refusal floor reads it)."""
        if not texts:
            return []
        logits = self._logits(query, texts)
        order = logits if retrieval_scores is None else blend_scores(logits, retrieval_scores, self.blend)
        relevance = _sigmoid(logits)
        return [(int(i), float(relevance[i])) for i in np.argsort(-order, kind="stable")[:k]]

    def logits(self, query: str, texts: list[str]) -> np.ndarray:
        """The model's raw logits for each text (what :func:`blend_scores` z-scores; ``kb tune``'s gate reads them)."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        return self._logits(query, texts)

    def _logits(self, query: str, texts: list[str]) -> np.ndarray:
        return self._scorer.logits(query, texts, self.batch_size, self.max_length).astype(np.float64)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ConfigError("reranking needs the query: pass query_str or query_bundle")
        if not nodes:
            return []
        out = []
        texts, retrieval = [n.node.get_content() for n in nodes], [n.score or 0.0 for n in nodes]
        for i, score in self.rank(query_bundle.query_str, texts, self.top_k, retrieval):
            nodes[i].node.metadata["retrieval_score"] = nodes[i].score
            out.append(NodeWithScore(node=nodes[i].node, score=score))
        return out


class _TorchScorer:
    def __init__(self, path: Path) -> None:
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(str(path), device="cpu", activation_fn=_identity())
        self.max_length = int(min(self.model.max_seq_length or 512, 512))

    def logits(self, query: str, texts: list[str], batch_size: int, max_length: int) -> np.ndarray:
        self.model.max_seq_length = max_length
        pairs = [(query, t) for t in texts]
        return np.asarray(self.model.predict(pairs, batch_size=batch_size, show_progress_bar=False), dtype=np.float32)


class _OnnxScorer:
    def __init__(self, path: Path, onnx_path: Path) -> None:
        from tokenizers import Tokenizer

        self.session = onnx_session(onnx_path)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.max_length = _max_length(path)

    def logits(self, query: str, texts: list[str], batch_size: int, max_length: int) -> np.ndarray:
        self.tokenizer.enable_truncation(max_length=max_length, strategy="only_second")
        self.tokenizer.no_padding()
        encodings = self.tokenizer.encode_batch([(query, t) for t in texts])
        order = by_length(encodings)  # the padding of a batch costs as much as real tokens
        out = np.empty(len(texts), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            members = order[start : start + batch_size]
            (logits,) = self.session.run(None, batch_feed(encodings, members, self.inputs))
            out[members] = logits.reshape(len(members), -1)[:, 0]
        return out


def export_onnx(path: Path, target: Path | None = None) -> Path:
    """Export the cross-encoder in ``path`` to int8 ONNX (once; reused afterwards; see :mod:`kb.onnx_export`).

    Written next to the model (``model-int8.onnx``), or into ``target`` when the model folder is read-only."""
    return export_bert(path, target or path / ONNX_FILE, Head.CLASSIFICATION, OnnxQuantization.INT8)


def load_reranker(
    model: str,
    top_k: int,
    backend: RerankerBackend | str,
    revision: str | None = None,
    max_length: int | None = None,
    blend: float | None = None,
) -> tuple[CrossEncoderReranker | None, str]:
    """The reranker, or ``None`` and why not (no model offline, unreadable files): never raises for those."""
    if not model:
        return None, "no reranker_model configured"
    try:
        loaded = CrossEncoderReranker.load(
            model, top_k=top_k, backend=backend, revision=revision, max_length=max_length, blend=blend
        )
        return loaded, ""
    except (ModelNotAvailableError, OSError, ValueError) as exc:
        return None, f"reranker {model!r} unavailable, answering without the reranking stage: {exc}"


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def zscore(values: np.ndarray | list[float]) -> np.ndarray:
    """Centre and scale so two score scales can be mixed; all-equal scores become zeros."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def blend_scores(logits: np.ndarray, retrieval: np.ndarray | list[float], blend: float) -> np.ndarray:
    """The reranked order's key: ``blend`` × z(logits) + (1 − ``blend``) × z(retrieval); the logits at 1.

    One function for kb and for the training script's dev split, so the blend chosen there is the one run here."""
    logits = np.asarray(logits, dtype=np.float64)
    if blend >= 1.0:
        return logits
    return blend * zscore(logits) + (1.0 - blend) * zscore(retrieval)


def _card(path: Path) -> dict[str, Any]:
    """The model folder's ``kb-reranker.json`` (its recommended settings), or {}."""
    import json

    file = path / CARD_FILE
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{file}: not readable JSON ({exc}); fix or delete it") from exc


def _identity() -> Any:
    import torch

    return torch.nn.Identity()


def _max_length(path: Path) -> int:
    import json

    for name in ("sentence_bert_config.json", "config.json"):
        file = path / name
        if file.exists():
            data = json.loads(file.read_text())
            value = data.get("max_seq_length") or data.get("max_position_embeddings")
            if value:
                return int(min(value, 512))
    return 512
