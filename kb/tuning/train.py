"""``kb tune``, stage 3: a cross-encoder trained with a listwise loss, starting from the bundled MiniLM.

    trainer = ListwiseTrainer(groups, TrainConfig(layers=6), folder=tune / "train", fingerprint=data_hash)
    state = trainer.run(deadline=None)                 # resumes from folder/checkpoint.pt
    model = trainer.export(tune / "reranker-…")        # HF folder + int8 ONNX for serving

The starting point is the bi-encoder MiniLM that kb already ships (``all-MiniLM-L6-v2``): its encoder, the
first ``layers`` of its 6 layers, and a fresh one-logit classification head (no cross-encoder weights are
reachable offline). Each training group is one question with its positive passage first and its mined
negatives after it; the loss is the softmax cross-entropy of the positive over the group (listwise, as
rerankers are trained), so every negative gets a gradient relative to the positive. The head starts from
nothing and the encoder from good weights: the head learns ``head_lr_factor`` times faster.

Training is resumable: the model, optimizer, schedule and random state are checkpointed atomically every
``checkpoint_seconds`` (0: after every step) and when a deadline stops it; the batches are a function of the
step number, so a resumed run trains on exactly what an uninterrupted one would have. ``train-state.json``
(step, loss, seconds per step) is rewritten after every step for ``kb tune --status``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kb.errors import ConfigError
from kb.tuning.files import read_json, write_json

CHECKPOINT_FILE = "checkpoint.pt"
STATE_FILE = "train-state.json"
BASE_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class TrainConfig:
    layers: int = 6  # keep the first N of MiniLM's 6 layers (3: about half the reranking latency)
    batch: int = 8  # questions per step
    epochs: float = 2.0
    max_steps: int | None = None  # cap on the steps (a tiny budget); None: epochs decide
    lr: float = 5e-5
    head_lr_factor: float = 20.0
    max_length: int = 160  # word pieces per (question, passage) pair while training
    residual: float = 0.0  # train inside a blend: the loss reads z(logit) + residual × z(fused score)
    seed: int = 5
    checkpoint_seconds: float = 60.0
    threads: int = 0  # torch intra-op threads; 0: every core
    device: str = "auto"  # "cpu", "cuda", or "auto": CUDA when torch sees a GPU (the served model is CPU ONNX)

    def __post_init__(self) -> None:
        if not 1 <= self.layers <= 6:
            raise ConfigError(f"layers={self.layers}: MiniLM has 6 layers; keep 1 to 6 of them")
        if self.batch < 1 or self.epochs <= 0:
            raise ConfigError("batch and epochs must be positive")


@dataclass
class Group:
    """One question, its passages (the positive first, then its negatives) and, optionally, their z(fused)."""

    question: str
    passages: list[str]
    fused_z: list[float] | None = None


@dataclass
class TrainState:
    step: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)  # one per step
    seconds: float = 0.0  # wall time training, summed over runs
    cpu_seconds: float = 0.0  # process CPU time training (all threads), summed over runs
    resumed_at: list[int] = field(default_factory=list)  # steps a run resumed from a checkpoint
    checkpointed: int = 0  # the last step saved
    stopped: str = ""  # why the last run stopped before the last step ("deadline"), else ""

    @property
    def done(self) -> bool:
        return self.step >= self.steps > 0


def planned_steps(groups: int, config: TrainConfig) -> int:
    steps = max(1, int(config.epochs * groups / config.batch))
    return min(steps, config.max_steps) if config.max_steps else steps


def base_model(layers: int) -> tuple[Any, Any]:
    """The bundled MiniLM's first ``layers`` layers with a fresh one-logit head, and its tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as transformers_logging

    from kb.embedding import resolve_model_path

    transformers_logging.set_verbosity_error()  # "some weights were newly initialized": the head, on purpose
    transformers_logging.disable_progress_bar()  # "Loading weights" bars would garble kb tune's progress
    minilm = resolve_model_path(BASE_MODEL)
    config = BertConfig.from_pretrained(str(minilm), num_labels=1, num_hidden_layers=layers)
    model = BertForSequenceClassification.from_pretrained(str(minilm), config=config)
    return model, AutoTokenizer.from_pretrained(str(minilm))


def listwise_loss(logits: Any, mask: Any, fused_z: Any = None, residual: float = 0.0) -> Any:
    """Softmax cross-entropy of the positive (column 0) over each row's passages (``mask`` marks real ones).

    With ``residual`` the row's logits are z-scored and ``residual`` × z(fused score) is added (times 3, a
    temperature that keeps the softmax from being flat): the model then learns what retrieval gets wrong."""
    import torch

    if residual:
        count = mask.sum(1, keepdim=True)
        mean = (logits * mask).sum(1, keepdim=True) / count
        std = (((logits - mean) * mask) ** 2).sum(1, keepdim=True).div(count).sqrt()
        logits = 3.0 * ((logits - mean) / (std + 1e-6) + residual * fused_z)
    logits = logits.masked_fill(~mask, -1e4)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class ListwiseTrainer:
    """Trains on ``groups``; checkpoints in ``folder``, valid while ``fingerprint`` (data + config) is unchanged."""

    def __init__(self, groups: list[Group], config: TrainConfig, folder: Path, fingerprint: str) -> None:
        if not groups:
            raise ConfigError("no training questions: write more questions first (kb tune --questions N)")
        self.groups, self.config, self.folder, self.fingerprint = groups, config, folder, fingerprint
        self.width = max(len(g.passages) for g in groups)
        self.state = TrainState(steps=planned_steps(len(groups), config))
        self._model: Any = None
        self._tokenizer: Any = None
        self.device = "cpu"

    # -- the run ---------------------------------------------------------------------------------------
    def run(self, deadline: float | None = None, on_step: Callable[[TrainState], None] | None = None) -> TrainState:
        """Train until the last step or ``deadline`` (``time.monotonic()``), resuming from a checkpoint."""
        import torch

        c = self.config
        torch.set_num_threads(c.threads or os.cpu_count() or 1)
        torch.manual_seed(c.seed)  # the new head's initial weights
        model, tokenizer = base_model(c.layers)
        self.device = resolve_device(c.device)
        model.to(self.device)
        optimizer, schedule = self._optimizer(model)
        self._resume(model, optimizer, schedule)
        self._model, self._tokenizer = model, tokenizer
        if self.state.done:
            return self.state
        model.train()
        self.state.stopped = ""
        saved_at = time.monotonic()
        wall, cpu = time.perf_counter(), time.process_time()
        while self.state.step < self.state.steps:
            if deadline is not None and time.monotonic() > deadline:
                self.state.stopped = "deadline"
                break
            loss = self._step(model, tokenizer, optimizer, schedule, self._batch(self.state.step))
            self.state.step += 1
            self.state.losses.append(round(loss, 5))
            now_wall, now_cpu = time.perf_counter(), time.process_time()
            self.state.seconds += now_wall - wall
            self.state.cpu_seconds += now_cpu - cpu
            wall, cpu = now_wall, now_cpu
            if self.state.done or time.monotonic() - saved_at >= c.checkpoint_seconds:
                self._checkpoint(model, optimizer, schedule)
                saved_at = time.monotonic()
            self._write_state()
            if on_step is not None:
                on_step(self.state)
        if self.state.checkpointed != self.state.step:
            self._checkpoint(model, optimizer, schedule)
        self._write_state()
        return self.state

    def _optimizer(self, model: Any) -> tuple[Any, Any]:
        import torch

        c = self.config
        head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
        body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
        optimizer = torch.optim.AdamW(
            [{"params": body, "lr": c.lr}, {"params": head, "lr": c.lr * c.head_lr_factor}], weight_decay=0.01
        )
        steps = self.state.steps
        warmup = max(1, steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
        )
        return optimizer, schedule

    def _batch(self, step: int) -> list[Group]:
        """The groups of ``step``: a seeded permutation per epoch, so the batches depend on the step alone."""
        size = min(self.config.batch, len(self.groups))
        per_epoch = max(1, len(self.groups) // size)
        order = np.random.default_rng([self.config.seed, step // per_epoch]).permutation(len(self.groups))
        start = (step % per_epoch) * size
        return [self.groups[i] for i in order[start : start + size]]

    def _step(self, model: Any, tokenizer: Any, optimizer: Any, schedule: Any, batch: list[Group]) -> float:
        import torch

        questions = [g.question for g in batch for _ in g.passages]
        passages = [p for g in batch for p in g.passages]
        enc = tokenizer(questions, passages, truncation="only_second", max_length=self.config.max_length,
                        padding=True, return_tensors="pt").to(self.device)  # fmt: skip
        flat = model(**enc).logits.squeeze(-1)
        # Groups may differ in size (a small index yields fewer negatives): pad each row, mask the padding.
        device = flat.device
        mask = torch.zeros(len(batch), self.width, dtype=torch.bool, device=device)
        index = torch.tensor(
            [row * self.width + col for row, g in enumerate(batch) for col in range(len(g.passages))], device=device
        )
        mask.view(-1)[index] = True
        logits = torch.zeros(len(batch) * self.width, device=device).index_put((index,), flat)
        logits = logits.view(len(batch), self.width)
        fused_z = None
        if self.config.residual:
            fused_z = torch.tensor(
                [(g.fused_z or []) + [0.0] * (self.width - len(g.passages)) for g in batch], device=device
            )
        loss = listwise_loss(logits, mask, fused_z, self.config.residual)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        return float(loss.item())

    # -- checkpoints -----------------------------------------------------------------------------------
    def _resume(self, model: Any, optimizer: Any, schedule: Any) -> None:
        import torch

        path = self.folder / CHECKPOINT_FILE
        if not path.is_file():
            return
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") != self.fingerprint:
            return  # other data or settings: this run starts over (the caller clears the folder)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["torch_rng"])  # dropout on the CPU; a GPU run is not bit-exact on resume
        self.state = TrainState(**saved["state"])
        if not self.state.done:
            self.state.resumed_at.append(self.state.step)

    def _checkpoint(self, model: Any, optimizer: Any, schedule: Any) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        self.state.checkpointed = self.state.step
        data = {
            "fingerprint": self.fingerprint,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "state": asdict(self.state),
        }
        tmp = self.folder / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
        torch.save(data, tmp)
        os.replace(tmp, self.folder / CHECKPOINT_FILE)  # a kill leaves the previous checkpoint or this one

    def _write_state(self) -> None:
        s = self.state
        recent = s.losses[-25:]
        write_json(self.folder / STATE_FILE, {
            "fingerprint": self.fingerprint, "step": s.step, "steps": s.steps, "checkpointed": s.checkpointed,
            "loss": round(float(np.mean(recent)), 4) if recent else None,
            "seconds_per_step": round(s.seconds / s.step, 2) if s.step else None, "updated_at": time.time(),
        })  # fmt: skip

    @property
    def model(self) -> Any:
        """The model being trained (after :meth:`run`), e.g. to evaluate it."""
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # -- the served model ------------------------------------------------------------------------------
    def export(self, target: Path, card: dict[str, Any] | None = None) -> Path:
        """Write the trained model to ``target`` (HF folder, tokenizer, int8 ONNX, ``kb-reranker.json``), atomically:
        it appears complete or not at all. An existing ``target`` is kept as is."""
        from kb.reranking import export_onnx

        if target.is_dir():
            return target
        if self._model is None:
            raise ConfigError("export: run() the trainer first")
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            self._model.eval().to("cpu")  # served on the CPU
            self._model.save_pretrained(str(work))
            self._tokenizer.save_pretrained(str(work))
            with warnings.catch_warnings():  # the tracer's notes on shapes: about the export, not the user's data
                warnings.simplefilter("ignore")
                export_onnx(work)  # the file kb serves with (reranker_backend = onnx)
            write_card(work, card or {})
            os.rename(work, target)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return target


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: torch sees no CUDA GPU here; use device='cpu' (or 'auto')")
    return device


def read_train_state(folder: Path) -> dict[str, Any] | None:
    return read_json(folder / STATE_FILE)


def write_card(model: Path, card: dict[str, Any]) -> None:
    """The model folder's ``kb-reranker.json`` (what :mod:`kb.reranking` reads, e.g. the blend), atomically."""
    from kb.reranking import CARD_FILE

    write_json(model / CARD_FILE, card)
