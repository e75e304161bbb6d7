"""One ONNX path for kb's BERT-family models: export once with torch, run forever without it.

    path = export_bert(model_folder, target, head=Head.EMBEDDING, quantize=Quantization.INT8)
    session = onnx_session(path)                 # onnxruntime only: no torch, no transformers
    feed = batch_feed(encodings)                 # tokenizers encodings → padded input arrays

The export is torch → ONNX (opset 17) → onnxruntime's BERT fusions (attention, LayerNorm, GELU as single
kernels) → optionally int8 dynamic quantization (per channel), done in a private temporary folder and renamed
into place, so processes that load the same model at once never read a half-written file. The model is traced
with transformers' eager attention: its SDPA path exports to a graph (masks through IsNaN/Where) that the
attention fusion does not recognise, and the unfused graph ran 35% slower for the same vectors. The embedder and
the cross-encoder both use it (the hand export is small, tested, and adds no dependency such as optimum).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# How exports are made, in cached file names: a cache written by an older kb is not reused.
# 2: traced with eager attention, so the attention fusion applies.
# 3: int8 keeps the first layer's FFN output projection in fp32 (see KEEP_FP32); the fp32 graph is revision 2's,
# so its cached file keeps that name (a deployment without torch must not need to export it again).
EXPORT_REVISION = 3
FP32_EXPORT_REVISION = 2
# The one product int8 spoils most, kept in fp32 for embeddings. Measured on MiniLM-L6 (1,500 PostgreSQL chunks,
# each layer's FFN output kept alone): layer 0's cuts the worst vector error by a third and the mean one by a fifth
# (cosine to fp32 min 0.981 -> 0.988, mean 0.9941 -> 0.9954) for little speed (encoding 1.78x -> 1.73x fp32's);
# no other single product did as much (scripts/bench_int8.py).
KEEP_FP32 = ("layer.0/output/dense/",)


class Head(StrEnum):
    EMBEDDING = "embedding"  # the encoder's last hidden state (pooled by the caller)
    CLASSIFICATION = "classification"  # a sequence-classification head's logits (cross-encoders)


class OnnxQuantization(StrEnum):
    NONE = "fp32"
    INT8 = "int8"


def export_bert(path: Path, target: Path, head: Head, quantize: OnnxQuantization) -> Path:
    """Export the model in ``path`` to ``target`` (once; an existing file is reused)."""
    if target.exists():
        return target
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=target.parent))
    try:
        _export(path, work, head, quantize, work / target.name)
        os.replace(work / target.name, target)  # atomic; a concurrent exporter's identical file is replaced
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s to %s in %.1f s", path, target, time.perf_counter() - started)
    return target


def _export(path: Path, work: Path, head: Head, quantize: OnnxQuantization, out: Path) -> None:
    import torch
    from onnx import TensorProto
    from transformers import AutoModel, AutoModelForSequenceClassification

    loader = AutoModel if head is Head.EMBEDDING else AutoModelForSequenceClassification
    try:
        model = loader.from_pretrained(str(path), attn_implementation="eager").eval()
    except (TypeError, ValueError):  # an architecture without the choice
        model = loader.from_pretrained(str(path)).eval()
    dummy = {
        "input_ids": torch.ones(2, 16, dtype=torch.long),
        "attention_mask": torch.ones(2, 16, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 16, dtype=torch.long),
    }
    output = "last_hidden_state" if head is Head.EMBEDDING else "logits"
    output_axes = {0: "batch", 1: "tokens"} if head is Head.EMBEDDING else {0: "batch"}

    class Wrapped(torch.nn.Module):  # one named output, whatever the model class returns
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            result = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return result[0]

    float_path = work / "model.fp32.onnx"
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(
            Wrapped(model),
            tuple(dummy.values()),
            str(float_path),
            input_names=list(dummy),
            output_names=[output],
            dynamic_axes={**{name: axes for name in dummy}, output: output_axes},
            opset_version=17,
            dynamo=False,
        )
    fused_path = work / "model.fused.onnx"
    try:  # BERT fusions before quantizing: fewer, larger kernels
        from onnxruntime.transformers import optimizer

        config = model.config
        fused = optimizer.optimize_model(
            str(float_path), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
        )
        log.info("BERT fusions for %s: %s", path, fused.get_fused_operator_statistics())
        fused.save_model_to_file(str(fused_path))
    except Exception as exc:  # an architecture the fusions do not know: use the plain export
        log.info("no BERT fusions for %s (%s)", path, exc)
        fused_path = float_path
    if quantize is OnnxQuantization.NONE:
        os.replace(fused_path, out)
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused contrib ops carry no inferred types: tell the quantizer the activations are float.
    quantize_dynamic(
        str(fused_path),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=head is Head.EMBEDDING,
        nodes_to_exclude=kept_fp32(fused_path) if head is Head.EMBEDDING else [],
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


def kept_fp32(path: Path) -> list[str]:
    """The MatMul nodes of the graph in ``path`` that int8 leaves in fp32 (:data:`KEEP_FP32`)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(k in n.name for k in KEEP_FP32)]


def onnx_session(path: Path, threads: int = 0) -> Any:
    """An onnxruntime session on the CPU, every graph optimisation on, ``threads`` intra-op (0: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    # Idle worker threads sleep instead of spinning: kb shares the cores with its parse workers and the
    # LLM, and spinning threads burn them in sched_yield (measured: half of all CPU time as system time).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No per-shape memory plans: every new (batch, length) shape kept one (about +85 MB over a few hundred shapes,
    # which is what a server sees from queries of every length), for no measurable speed (45.7 vs 45.0 passages/s).
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def batch_feed(
    encodings: list[Any], members: np.ndarray | list[int], inputs: set[str], width: int = 0
) -> dict[str, np.ndarray]:
    """Padded input arrays for the encodings ``members`` (a batch is padded to its longest member, or to
    ``width`` when that is longer)."""
    width = max(width, *(len(encodings[i].ids) for i in members))
    feed = {name: np.zeros((len(members), width), dtype=np.int64) for name in INPUTS}
    for row, i in enumerate(members):
        encoding = encodings[i]
        feed["input_ids"][row, : len(encoding.ids)] = encoding.ids
        feed["attention_mask"][row, : len(encoding.ids)] = 1
        feed["token_type_ids"][row, : len(encoding.ids)] = encoding.type_ids
    return {k: v for k, v in feed.items() if k in inputs}


def by_length(encodings: list[Any]) -> np.ndarray:
    """Indices ordered by token count: batches of similar length waste no work on padding."""
    return np.argsort([len(e.ids) for e in encodings], kind="stable")
