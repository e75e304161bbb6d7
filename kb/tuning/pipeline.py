"""``kb tune`` end to end: questions → hard negatives → training → gate → install, resumable, with a report.

    from kb.tuning.pipeline import TuneConfig, Tuner
    report = Tuner("indexes/handbook", TuneConfig(questions=1000, minutes=480)).run()
    report.installed, report.install_note, report.gate["reranked"]
    Tuner("indexes/handbook").status()                      # what kb tune --status prints
    print(render_markdown(load_report("indexes/handbook")))  # what kb tune --report prints

Everything lives under ``INDEX/tune/`` (or ``folder``, for a script's variants; ``questions_dir`` lets
variants share one questions file), and every stage resumes where a kill stopped it:

=========== ======================================== ==============================================
stage       written                                  a kill loses at most
=========== ======================================== ==============================================
questions   ``questions.jsonl``, one line per chunk  the chunk the LLM is writing for
negatives   ``negatives.jsonl``, one line per question the question being retrieved
train       ``train/checkpoint.pt`` (atomic)          the steps since the last checkpoint
                                                     (``checkpoint_seconds``; 0: the current batch)
export      ``reranker-<id>/`` renamed into place     the export in progress
gate        ``heldout-scores.jsonl``, one line each   the question being scored
install     ``kb.toml`` replaced atomically          nothing
=========== ======================================== ==============================================

A stage whose inputs or settings changed starts over (each records a fingerprint of them), so a run with
more questions retrains instead of resuming a model trained on fewer. ``minutes`` is the budget of one
run: question writing may take ``question_share`` of it, then the run mines, trains until shortly before
the end, and gates what it has, so an overnight run ends with a verdict; the next run continues.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kb.errors import ConfigError, IndexLockedError
from kb.locking import IndexLock
from kb.tuning.files import read_json, write_json
from kb.tuning.gate import BLENDS, MIN_GAIN, SCORES_FILE, GateResult, GateThresholds, gate, score_heldout
from kb.tuning.install import configured_model, install, uninstall
from kb.tuning.negatives import (
    HELDOUT,
    NEGATIVES_FILE,
    TRAIN,
    Mined,
    MiningConfig,
    NegativeMiner,
    enough,
    select_questions,
)
from kb.tuning.questions import QUESTIONS_FILE, QuestionRow, QuestionWriter, read_rows, tune_dir
from kb.tuning.train import CHECKPOINT_FILE, Group, ListwiseTrainer, TrainConfig, read_train_state, write_card

STATE_FILE = "state.json"
REPORT_FILE = "report.json"
REPORT_MD = "report.md"
TRAIN_DIR = "train"
MODEL_PREFIX = "reranker-"
STAGES = ("questions", "negatives", "train", "export", "gate", "install")
Event = Callable[[str, int, int, str], None]  # stage, done, total, message
RUNTIME_FIELDS = ("checkpoint_seconds", "threads", "device")  # how a run trains, not what: a resume may change them


@dataclass(frozen=True)
class TuneConfig:
    """The budget and the recipe of a ``kb tune`` run (every field is a ``kb tune`` option)."""

    questions: int = 1000  # distinct questions to write (and train/gate on)
    minutes: float | None = None  # budget of one run; None: every stage runs to its target
    question_share: float = 0.6  # of ``minutes``, what writing questions may take
    heldout: float = 0.2  # share of the chunks whose questions are held out for the gate
    min_heldout: int = 20  # fewer held-out questions: no verdict, nothing installed
    group: int = 8  # one positive + 7 mined negatives per question
    depth: int = 30
    first_rank: int = 3
    section_depth: int = 0
    layers: int = 6
    batch: int = 8
    epochs: float = 2.0
    max_steps: int | None = None
    lr: float = 5e-5
    max_length: int = 160
    checkpoint_seconds: float = 60.0  # a checkpoint is ~270 MB at 6 layers: every step would write ~130 GB a night
    min_gain: float = MIN_GAIN
    max_hit3_drop: float = 0.0
    blends: tuple[float, ...] = BLENDS
    install: bool = True
    seed: int = 13  # the chunk sample (the same as QuestionWriter's, so a started questions file continues)
    train_seed: int = 5
    threads: int = 0  # torch threads; 0: every core
    device: str = "auto"  # training device: auto (CUDA when there is one), cpu, cuda
    llm_threads: int = 0  # llama.cpp threads; 0: the backend's default
    llm_model_path: str = ""  # a GGUF for the questions (default: the index's llm settings)
    llm_max_tokens: int = 96  # two short lines

    def __post_init__(self) -> None:
        if self.questions < 1:
            raise ConfigError(f"questions={self.questions}: write at least one question")
        if not 0.0 < self.heldout < 1.0:
            raise ConfigError(f"heldout={self.heldout}: a share of the chunks, strictly between 0 and 1")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"minutes={self.minutes}: a positive budget, or none")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneConfig:
        """A config saved with ``dataclasses.asdict`` (``kb tune --background`` hands it to its child)."""
        return cls(**{**data, "blends": tuple(data.get("blends", BLENDS))})

    def mining(self, candidates: int) -> MiningConfig:
        return MiningConfig(self.group, self.depth, self.first_rank, candidates, self.section_depth, self.seed)

    def training(self) -> TrainConfig:
        return TrainConfig(layers=self.layers, batch=self.batch, epochs=self.epochs, max_steps=self.max_steps,
                           lr=self.lr, max_length=self.max_length, seed=self.train_seed,
                           checkpoint_seconds=self.checkpoint_seconds, threads=self.threads,
                           device=self.device)  # fmt: skip

    def thresholds(self) -> GateThresholds:
        return GateThresholds(self.min_gain, self.max_hit3_drop, self.min_heldout)


@dataclass
class TuneReport:
    """What a run learned, on which data, and the gate's figures (``tune/report.json``)."""

    index: str
    finished_at: float
    complete: bool  # every stage reached its target (not stopped by the budget)
    config: dict[str, Any]
    questions: dict[str, Any]
    negatives: dict[str, Any]
    training: dict[str, Any]
    model: dict[str, Any]
    gate: dict[str, Any] | None
    installed: bool
    install_note: str
    cpu_minutes: dict[str, float]
    wall_minutes: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Tuner:
    """Runs ``kb tune`` for the index at ``index``.

    ``kb``: an open :class:`~kb.KnowledgeBase` of that index to use (``kb serve --tune``); otherwise the index is
    opened only while it is read (the chunk sample, mining), so it is free while the LLM writes and the model
    trains. ``llm``: the LlamaIndex LLM that writes questions (default: built from the index's settings)."""

    def __init__(
        self,
        index: str | Path,
        config: TuneConfig | None = None,
        *,
        kb: Any = None,
        llm: Any = None,
        folder: Path | None = None,
        questions_dir: Path | None = None,
        on_event: Event | None = None,
    ) -> None:
        self.index = Path(index)
        self.config = config or TuneConfig()
        self.kb, self._llm = kb, llm
        self.folder = Path(folder) if folder else tune_dir(self.index)
        self.questions_dir = Path(questions_dir) if questions_dir else self.folder
        self.on_event = on_event
        self._state: dict[str, Any] = {}
        self._last_write = 0.0

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> TuneReport:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            lock = IndexLock(self.folder).acquire()  # tune/LOCK: one kb tune per work folder
        except IndexLockedError as exc:
            raise IndexLockedError(f"kb tune is already running on {self.folder} ({exc}); follow it with "
                                   f"kb tune --kb {self.index} --status") from None  # fmt: skip
        try:
            return self._run()
        finally:
            self._save_state(running=False)
            lock.release()

    def _run(self) -> TuneReport:
        c = self.config
        began = time.monotonic()
        deadline = began + c.minutes * 60 if c.minutes else None
        self._state = read_json(self.folder / STATE_FILE) or {}
        self._state.update(pid=os.getpid(), nice=_nice(), started_at=time.time(), running=True, stage="questions",
                           config=_config_dict(c), finished=False)  # fmt: skip
        self._state.setdefault("cpu", {})
        self._state.setdefault("wall", {})
        notes: list[str] = []

        with self._stage("questions"):
            question_deadline = began + c.minutes * 60 * c.question_share if c.minutes else None
            rows, exhausted = self._write_questions(question_deadline)
        questions = self._select(rows)
        questions_complete = self._enough(questions) or exhausted
        if exhausted and len(questions) < c.questions:
            notes.append(f"the index offers only {len(self._plan_cache or [])} chunks worth a question (prose, at "
                         f"most 3 per document): {len(questions)} questions of the {c.questions} asked")  # fmt: skip
        with self._stage("negatives"):
            mined, candidates = self._mine(questions, deadline)
        train = [m for m in mined if m.split == TRAIN]
        heldout = [m for m in mined if m.split == HELDOUT]
        mined_complete = len(mined) == len(questions)

        train_config = c.training()
        recipe = {k: v for k, v in asdict(train_config).items() if k not in RUNTIME_FIELDS}
        data_id = fingerprint(recipe, self._state.get("mining_id"), [m.key for m in train])
        state = None
        with self._stage("train"):
            if train:
                trainer = ListwiseTrainer(self._groups(train), train_config, self.folder / TRAIN_DIR, data_id)
                self._clear_stale_checkpoint(data_id)
                reserve = max(30.0, 0.1 * c.minutes * 60) if c.minutes else 0.0
                state = trainer.run(deadline - reserve if deadline else None, self._on_step)
            else:
                notes.append("no training questions yet: nothing was trained")

        model_dir: Path | None = None
        result: GateResult | None = None
        if state is not None and state.step > 0:
            with self._stage("export"):
                model_dir = self.folder / f"{MODEL_PREFIX}{data_id[:10]}-{state.step}"
                self._event("export", 0, 1, f"exporting {model_dir.name} (int8 ONNX)")
                trainer.export(model_dir, {"trained_by": "kb tune", "complete": False})
                self._event("export", 1, 1, str(model_dir))
            with self._stage("gate"):
                result = self._gate(model_dir, heldout)
                write_card(model_dir, self._card(result, state, questions, heldout))
        elif state is not None:
            notes.append("the budget ended before the first training step: nothing to gate")

        with self._stage("install"):
            installed, install_note = self._install(model_dir, result)
        self._cleanup(model_dir)
        complete = bool(questions_complete and mined_complete and state is not None and state.done and result)
        report = self._report(rows, questions, mined, train, heldout, candidates, state, model_dir, result,
                              installed, install_note, complete, notes)  # fmt: skip
        write_json(self.folder / REPORT_FILE, report.as_dict())
        (self.folder / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
        self._state.update(stage="done" if complete else "stopped", finished=complete)
        return report

    # -- stage 1 --------------------------------------------------------------------------------------
    _plan_cache: list[Any] | None = None

    def _write_questions(self, deadline: float | None) -> tuple[list[QuestionRow], bool]:
        """The question rows (written now as far as needed), and whether the chunk plan ran out."""
        c = self.config
        path = self.questions_dir / QUESTIONS_FILE
        rows = read_rows(path)
        selected = self._select(rows)
        self._event("questions", min(len(selected), c.questions), c.questions,
                    f"{len(selected)} questions from {len(rows)} chunks")  # fmt: skip
        if self._enough(selected):
            return rows, False
        with self._index() as kb:
            writer = QuestionWriter(kb, self._question_llm, seed=c.seed, folder=self.questions_dir)
            # More chunks than questions wanted (a chunk yields 0–2); the sample's order does not depend on its
            # size, so this plan continues any plan started with the same seed.
            self._plan_cache = writer.plan(max(3 * c.questions, c.questions + 100))
        if deadline is not None and time.monotonic() > deadline:
            return rows, False
        started, written, count = time.monotonic(), 0, len(selected)
        all_rows = list(rows)

        def on_row(row: QuestionRow, done: int, total: int) -> None:
            nonlocal written, count
            all_rows.append(row)
            written += len(row.questions)
            count = len(self._select(all_rows))
            rate = written / max(1e-9, time.monotonic() - started) * 60
            eta = max(0, c.questions - count) / rate if rate > 0 else None
            self._state["questions"] = {"chunks_done": done, "questions": count, "target": c.questions,
                                        "questions_per_minute": round(rate, 2),
                                        "eta_minutes": round(eta, 1) if eta is not None else None}  # fmt: skip
            self._event("questions", min(count, c.questions), c.questions, f"{count} questions from {done} chunks")

        minutes = (deadline - time.monotonic()) / 60 if deadline is not None else None
        writer.run(target=len(self._plan_cache), chunks=self._plan_cache, on_row=on_row,
                   minutes=max(minutes, 1e-6) if minutes is not None else None,
                   stop=lambda: self._enough(self._select(all_rows)))  # fmt: skip
        rows = read_rows(path)
        done_ids = {r.chunk_id for r in rows}
        exhausted = all(point_id in done_ids for point_id, _ in self._plan_cache)
        return rows, exhausted

    def _select(self, rows: list[QuestionRow]) -> list[Any]:
        """The questions this run uses: the first ``questions``, and more until both splits can do their job."""
        c = self.config
        return select_questions(rows, c.questions, c.heldout, c.min_heldout, 1)

    def _enough(self, questions: list[Any]) -> bool:
        c = self.config
        sides = {TRAIN: sum(q.split == TRAIN for q in questions), HELDOUT: sum(q.split == HELDOUT for q in questions)}
        return enough(len(questions), sides, c.questions, c.min_heldout, 1)

    @property
    def _question_llm(self) -> Any:
        if self._llm is None:
            from kb.llm import build_llm
            from kb.settings import LlmBackend, Settings

            overrides: dict[str, Any] = {"llm_max_tokens": self.config.llm_max_tokens, "llm_temperature": 0.0}
            if self.config.llm_model_path:
                overrides |= {"llm_backend": "local", "llm_model_path": self.config.llm_model_path}
            settings = Settings.load(self.index, **overrides)
            if settings.llm_backend is LlmBackend.AUTO:
                settings = Settings.load(self.index, **overrides, llm_backend="local")
            self._llm = build_llm(settings)
            if self._llm is None:
                raise ConfigError(
                    "kb tune needs an LLM to write questions, and llm_backend is 'extractive': set llm_backend = "
                    '"local" (the bundled Qwen) or "openai" in kb.toml, or pass --llm-model-path FILE.gguf'
                )
            if self.config.llm_threads and hasattr(self._llm, "n_threads"):
                self._llm.n_threads = self.config.llm_threads
        return self._llm

    # -- stage 2 --------------------------------------------------------------------------------------
    def _mine(self, questions: list[Any], deadline: float | None) -> tuple[list[Mined], int]:
        path = self.folder / NEGATIVES_FILE
        with self._index() as kb:
            s = kb.settings
            mining = self.config.mining(s.reranker_candidates)
            # The ranking negatives come from: a change of these settings makes the mined lists stale.
            ranking = [s.retrieval_mode, s.fusion, s.dense_weight, s.bm25_weight, s.rrf_k, s.prefetch_limit,
                       s.fusion_normalization, s.exact_token_boost, s.context_weight, kb.info.embedder]  # fmt: skip
            mining_id = fingerprint(asdict(mining), ranking, self.config.heldout)
            if self._state.get("mining_id") != mining_id and path.exists():
                path.unlink()  # other settings: mine again
                (self.folder / SCORES_FILE).unlink(missing_ok=True)
            self._state["mining_id"] = mining_id
            started = time.monotonic()

            def on_question(done: int, total: int) -> None:
                rate = done / max(1e-9, time.monotonic() - started)
                self._state["negatives"] = {"done": done, "total": total}
                self._event("negatives", done, total, f"{rate:.1f} questions/s")

            mined = NegativeMiner(kb, mining).run(questions, path, deadline, on_question)
        self._state["negatives"] = {"done": len(mined), "total": len(questions)}
        return mined, mining.candidates

    # -- stage 3 --------------------------------------------------------------------------------------
    @staticmethod
    def _groups(train: list[Mined]) -> list[Group]:
        return [Group(m.question, [m.positive, *(n.text for n in m.negatives)]) for m in train if m.negatives]

    def _clear_stale_checkpoint(self, data_id: str) -> None:
        saved = read_train_state(self.folder / TRAIN_DIR)
        checkpoint = self.folder / TRAIN_DIR / CHECKPOINT_FILE
        if checkpoint.exists() and saved is not None and saved.get("fingerprint") != data_id:
            checkpoint.unlink()  # trained on other questions or settings: this run trains from the start

    def _on_step(self, state: Any) -> None:
        per_step = state.seconds / max(1, state.step)
        eta = (state.steps - state.step) * per_step / 60
        self._state["train"] = {"step": state.step, "steps": state.steps, "loss": state.losses[-1],
                                "seconds_per_step": round(per_step, 2), "eta_minutes": round(eta, 1)}  # fmt: skip
        self._event("train", state.step, state.steps, f"loss {np.mean(state.losses[-10:]):.3f}")

    # -- stage 4 --------------------------------------------------------------------------------------
    def _gate(self, model_dir: Path, heldout: list[Mined]) -> GateResult:
        from kb.reranking import CrossEncoderReranker
        from kb.settings import RerankerBackend, Settings

        settings = Settings.load(self.index)
        # What kb serves: int8 ONNX at the index's pair length, the raw logits blended with the fused scores.
        reranker = CrossEncoderReranker.load(model_dir, backend=RerankerBackend.ONNX, blend=1.0,
                                             max_length=settings.reranker_max_tokens)  # fmt: skip
        logits, latencies = score_heldout(
            reranker, heldout, self.folder / SCORES_FILE, model_dir.name,
            lambda done, total: self._event("gate", done, total, "scoring held-out questions"),
        )  # fmt: skip
        result = gate(heldout, logits, self.config.thresholds(), self.config.blends, latencies)
        self._state["gate"] = {"passed": result.passed, "reason": result.reason, "blend": result.blend}
        return result

    def _card(self, result: GateResult, state: Any, questions: list[Any], heldout: list[Mined]) -> dict[str, Any]:
        return {
            "blend": result.blend,  # what kb.reranking reads: the blend chosen on the held-out questions
            "trained_by": "kb tune",
            "base": f"all-MiniLM-L6-v2 (bundled), first {self.config.layers} layers + a new head",
            "index": str(self.index.resolve()),
            "questions": len(questions),
            "heldout_questions": len(heldout),
            "steps": state.step,
            "complete": state.done,
            "pair_tokens_trained": self.config.max_length,
            "gate": {
                "passed": result.passed,
                "reason": result.reason,
                "fused_ndcg10": result.fused.ndcg10,
                "reranked_ndcg10": result.reranked.ndcg10,
            },
            "created_at": time.time(),
        }

    # -- stage 5 --------------------------------------------------------------------------------------
    def _install(self, model_dir: Path | None, result: GateResult | None) -> tuple[bool, str]:
        if result is None or model_dir is None:
            return False, "not installed: nothing was gated (the run stopped before a training step was done)"
        if not result.passed:
            took_back = uninstall(self.index, self.folder)
            if took_back:
                self._swap(None)
            return False, "not installed: " + result.reason + (
                "; the tuned reranker an earlier run installed was taken back" if took_back else ""
            )
        if not self.config.install:
            return False, "not installed (install turned off); the gate passed: " + result.reason
        value = install(self.index, model_dir, self.folder)
        self._swap(model_dir)
        note = f"installed: reranker_model = {value!r} in {self.index / 'kb.toml'}; " + result.reason
        if os.environ.get("KB_RERANKER_MODEL"):
            note += " (KB_RERANKER_MODEL is set in this environment and overrides kb.toml)"
        return True, note

    def _swap(self, model_dir: Path | None) -> None:
        """An open KnowledgeBase (``kb serve --tune``) reranks with the new model (or none) from the next question."""
        if self.kb is None:
            return
        from kb.reranking import load_reranker
        from kb.settings import Settings

        s = self.kb.settings
        s.reranker_model = str(model_dir.resolve()) if model_dir else Settings.load(self.index).reranker_model
        reranker, note = load_reranker(s.reranker_model, s.reranker_top_k, s.reranker_backend, None,
                                       s.reranker_max_tokens, s.reranker_blend)  # fmt: skip
        self.kb.use_reranker(reranker)
        self.kb.reranker_note = note

    def _cleanup(self, keep: Path | None) -> None:
        """Drop the model folders of earlier runs but this run's and the installed one (≈100 MB each)."""
        installed = configured_model(self.index)
        for folder in self.folder.glob(f"{MODEL_PREFIX}*"):
            if folder == keep or not folder.is_dir() or folder.name.startswith("."):
                continue
            if installed and Path(installed).name == folder.name:
                continue
            shutil.rmtree(folder, ignore_errors=True)

    # -- report ---------------------------------------------------------------------------------------
    def _report(self, rows, questions, mined, train, heldout, candidates, state, model_dir, result,
                installed, install_note, complete, notes) -> TuneReport:  # fmt: skip
        c = self.config
        return TuneReport(
            index=str(self.index),
            finished_at=time.time(),
            complete=complete,
            config=_config_dict(c),
            questions=question_summary(rows, questions, c.questions, self.questions_dir / QUESTIONS_FILE),
            negatives=negative_summary(mined, train, c, candidates),
            training=training_summary(state, c) if state is not None else {},
            model=model_summary(model_dir, c.layers),
            gate=result.as_dict() if result else None,
            installed=installed,
            install_note=install_note,
            cpu_minutes={k: round(v / 60, 2) for k, v in self._state.get("cpu", {}).items()},
            wall_minutes={k: round(v / 60, 2) for k, v in self._state.get("wall", {}).items()},
            notes=notes,
        )

    # -- progress and status ---------------------------------------------------------------------------
    class _Timed:
        def __init__(self, tuner: Tuner, stage: str) -> None:
            self.tuner, self.stage = tuner, stage

        def __enter__(self) -> None:
            self.wall, self.cpu = time.perf_counter(), time.process_time()
            self.tuner._state["stage"] = self.stage
            self.tuner._save_state()

        def __exit__(self, *exc: object) -> None:
            state = self.tuner._state
            state["wall"][self.stage] = state["wall"].get(self.stage, 0.0) + time.perf_counter() - self.wall
            state["cpu"][self.stage] = state["cpu"].get(self.stage, 0.0) + time.process_time() - self.cpu
            self.tuner._save_state()

    def _stage(self, stage: str) -> Tuner._Timed:
        return Tuner._Timed(self, stage)

    def _event(self, stage: str, done: int, total: int, message: str) -> None:
        self._state["stage"] = stage
        self._state["progress"] = {"stage": stage, "done": done, "total": total, "message": message}
        if time.monotonic() - self._last_write > 1.0 or done >= total:  # state.json at most once a second
            self._save_state()
        if self.on_event is not None:
            self.on_event(stage, done, total, message)

    def _save_state(self, running: bool | None = None) -> None:
        if running is not None:
            self._state["running"] = running
        self._state["updated_at"] = time.time()
        write_json(self.folder / STATE_FILE, self._state)
        self._last_write = time.monotonic()

    def _index(self) -> Any:
        """The open KnowledgeBase (the one handed in, or the index opened for the block)."""
        from contextlib import nullcontext

        from kb.knowledge_base import KnowledgeBase

        if self.kb is not None:
            return nullcontext(self.kb)
        return KnowledgeBase.open(self.index, create=False)

    def status(self) -> dict[str, Any]:
        """Progress of the current or last run: stage, questions so far, steps, ETA, whether it is running."""
        state = read_json(self.folder / STATE_FILE) or {}
        rows = read_rows(self.questions_dir / QUESTIONS_FILE)
        train = read_train_state(self.folder / TRAIN_DIR) or {}
        target = (state.get("config") or {}).get("questions", self.config.questions)
        kept = _distinct(rows)
        question_eta = (state.get("questions") or {}).get("eta_minutes") if kept < target else 0.0
        train_eta = None
        if train.get("steps"):
            train_eta = round((train["steps"] - train["step"]) * (train.get("seconds_per_step") or 0) / 60, 1)
        return {
            "folder": str(self.folder),
            "running": _running(self.folder),
            "stage": state.get("stage", "not started"),
            "finished": bool(state.get("finished")),
            "pid": state.get("pid"),
            "nice": state.get("nice"),
            "progress": state.get("progress"),
            "questions": {"written": kept, "target": target, "chunks_tried": len(rows), "eta_minutes": question_eta},
            "negatives": state.get("negatives"),
            "train": {k: train.get(k) for k in ("step", "steps", "checkpointed", "loss", "seconds_per_step")}
            | {"eta_minutes": train_eta},
            "gate": state.get("gate"),
            "installed": configured_model(self.index),
            "updated_at": state.get("updated_at"),
        }  # fmt: skip


def question_summary(rows: list[QuestionRow], questions: list[Any], target: int, file: Path) -> dict[str, Any]:
    dropped = Counter(reason for row in rows for reason in row.dropped)
    return {
        "chunks_tried": len(rows),
        "chunks_used": len({q.chunk_id for q in questions}),
        "written": sum(len(r.questions) for r in rows),
        "used": len(questions),
        "target": target,
        "train": sum(q.split == TRAIN for q in questions),
        "heldout": sum(q.split == HELDOUT for q in questions),
        "styles": dict(Counter(q.style for q in questions).most_common()),
        "dropped": dict(dropped.most_common()),
        "file": str(file),
    }


def negative_summary(mined: list[Mined], train: list[Mined], config: TuneConfig, candidates: int) -> dict[str, Any]:
    negatives = [len(m.negatives) for m in train]
    ranks = np.asarray([m.positive_rank for m in mined], dtype=np.float64)
    found = ranks[ranks >= 0]
    return {
        "mined": len(mined),
        "per_question": round(float(np.mean(negatives)), 2) if negatives else 0.0,
        "from_fused_ranks": f"{config.first_rank}-{config.depth}",
        "random_fill": sum(1 for m in train for n in m.negatives if n.rank < 0),
        "heldout_candidates": candidates,
        "positive_in_fused_top": round(float(len(found) / len(ranks)), 4) if len(ranks) else 0.0,
        "positive_mean_rank": round(float(np.mean(found + 1)), 2) if len(found) else None,
    }


def training_summary(state: Any, config: TuneConfig) -> dict[str, Any]:
    losses = np.asarray(state.losses, dtype=np.float64)
    window = max(1, len(losses) // 10)
    tenths = np.array_split(losses, min(10, len(losses))) if len(losses) else []
    curve = [round(float(part.mean()), 4) for part in tenths]
    return {
        "steps": state.step,
        "planned_steps": state.steps,
        "layers": config.layers,
        "batch": config.batch,
        "group": config.group,
        "epochs": config.epochs,
        "lr": config.lr,
        "pair_tokens": config.max_length,
        "loss_first": round(float(losses[:window].mean()), 4) if len(losses) else None,
        "loss_last": round(float(losses[-window:].mean()), 4) if len(losses) else None,
        "loss_min": round(float(losses.min()), 4) if len(losses) else None,
        "loss_curve": curve,  # mean loss of each tenth of the steps
        "seconds": round(state.seconds, 1),
        "cpu_seconds": round(state.cpu_seconds, 1),
        "resumed_at": state.resumed_at,
        "stopped": state.stopped,
    }


def model_summary(model_dir: Path | None, layers: int) -> dict[str, Any]:
    if model_dir is None or not model_dir.is_dir():
        return {}
    weights, onnx = model_dir / "model.safetensors", model_dir / "model-int8.onnx"
    return {
        "path": str(model_dir),
        "layers": layers,
        "parameters_millions": round(weights.stat().st_size / 4 / 1e6, 1) if weights.exists() else None,
        "onnx_int8_mb": round(onnx.stat().st_size / 1e6, 1) if onnx.exists() else None,
    }


def _distinct(rows: list[QuestionRow]) -> int:
    return len({" ".join(q["question"].split()).lower() for row in rows for q in row.questions})


def _config_dict(config: TuneConfig) -> dict[str, Any]:
    data = asdict(config)
    data["blends"] = list(config.blends)
    return data


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) if hasattr(os, "getpriority") else 0


def _running(folder: Path) -> bool:
    """Whether a kb tune holds ``folder/LOCK`` now (the kernel drops it when its holder dies)."""
    if not (folder / "LOCK").exists():
        return False
    try:
        IndexLock(folder).acquire().release()
    except IndexLockedError:
        return True
    return False


def load_report(index: str | Path, folder: Path | None = None) -> TuneReport | None:
    data = read_json((Path(folder) if folder else tune_dir(Path(index))) / REPORT_FILE)
    return TuneReport(**data) if data else None


def start_background(kb: Any, config: TuneConfig | None = None, **options: Any) -> threading.Thread:
    """Run ``kb tune`` for the open ``kb`` in a daemon thread at the lowest CPU priority (``kb serve --tune``).

    Linux gives each thread its own nice value and the threads it starts inherit it (llama.cpp's, torch's
    pool when this thread starts it): queries keep the cores first. An install swaps the served reranker."""

    def work() -> None:
        if hasattr(os, "setpriority"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            Tuner(kb.path, config, kb=kb, **options).run()
        except Exception:  # a background job: its state file and the log say what happened
            import logging

            logging.getLogger(__name__).exception("kb tune (background) failed")

    thread = threading.Thread(target=work, name="kb-tune", daemon=True)
    thread.start()
    return thread


def render_markdown(report: TuneReport) -> str:
    """The report as Markdown (``kb tune --report``; ``tune/report.md``)."""
    r, q, n, t, m = report, report.questions, report.negatives, report.training, report.model
    styles = ", ".join(f"{k} {v}" for k, v in q["styles"].items()) or "none"
    lines = [
        f"# kb tune: {r.index}",
        "",
        f"**{'Installed' if r.installed else 'Not installed'}.** {r.install_note}",
        "",
        f"Run {'complete' if r.complete else 'stopped before its targets (run kb tune again to continue)'}, "
        f"finished {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.finished_at))}.",
        "",
        "## Data",
        f"- Questions: {q['used']} used of {q['target']} asked ({q['train']} train, {q['heldout']} held out by "
        f"chunk hash), from {q['chunks_used']} chunks; {q['chunks_tried']} chunks tried, {q['written']} questions "
        f"written. Styles: {styles}.",
        f"- Dropped by the writer's filters: {', '.join(f'{k} {v}' for k, v in q['dropped'].items()) or 'none'}.",
        f"- Negatives: {n['per_question']} per training question from kb's fused ranks {n['from_fused_ranks']} "
        f"outside the positive's document section ({n['random_fill']} random fills); the positive was in the "
        f"fused top {r.config['depth']} for {n['positive_in_fused_top']:.0%} of the questions"
        + (f" (mean rank {n['positive_mean_rank']})." if n.get("positive_mean_rank") else "."),
    ]
    if t:
        lines += [
            "",
            "## Training",
            f"- {t['steps']} of {t['planned_steps']} steps{' (stopped: ' + t['stopped'] + ')' if t['stopped'] else ''}"
            f", MiniLM first {t['layers']} layers + new head, {t['batch']} questions × {t['group']} passages per "
            f"step, lr {t['lr']}, {t['pair_tokens']}-token pairs, listwise softmax loss.",
            f"- Loss {t['loss_first']} → {t['loss_last']} (min {t['loss_min']}); curve: "
            + " ".join(str(x) for x in t["loss_curve"]),
            f"- {t['seconds'] / 60:.1f} min, {t['cpu_seconds'] / 60:.1f} CPU min"
            + (f"; resumed at steps {t['resumed_at']}" if t["resumed_at"] else ""),
        ]
    if m:
        size = f"{m['parameters_millions']} M parameters, int8 ONNX {m['onnx_int8_mb']} MB"
        lines += ["", f"Model: `{m['path']}`, {size}."]
    g = r.gate
    if g:
        fused = g["fused"]
        lines += [
            "",
            f"## Gate: {'PASS' if g['passed'] else 'FAIL'}",
            f"{g['questions']} held-out questions, the fused top {g['candidates']:g} reranked (int8 ONNX; the positive "
            f"is among them for {g['positive_retrieved']:.0%}); p50 {g['latency_ms_p50']} ms per question. "
            f"Needs nDCG@10 ≥ fused + {g['thresholds']['min_gain']} and hit@3 not lower "
            f"(by more than {g['thresholds']['max_hit3_drop']}).",
            "",
            "| order | nDCG@10 | hit@1 | hit@3 | MRR@10 |",
            "|---|---|---|---|---|",
            f"| fused | {fused['ndcg10']:.3f} | {fused['hit1']:.3f} | {fused['hit3']:.3f} | {fused['mrr10']:.3f} |",
        ]
        for blend, f in g["blends"].items():
            mark = " **(chosen)**" if float(blend) == g["blend"] else ""
            lines.append(f"| blend {blend}{mark} | {f['ndcg10']:.3f} | {f['hit1']:.3f} | {f['hit3']:.3f} | "
                         f"{f['mrr10']:.3f} |")  # fmt: skip
        lo, hi = g["gain_interval"]
        lines += ["", f"Chosen blend {g['blend']:g}: nDCG@10 gain {g['gain']:+.3f} (paired bootstrap 95% "
                  f"[{lo:+.3f}, {hi:+.3f}]; the blend is chosen on these same questions, which flatters it "
                  "slightly). " + g["reason"] + "."]  # fmt: skip
    lines += ["", "## Time", "| stage | wall min | CPU min |", "|---|---|---|"]
    for stage in STAGES:
        if stage in r.wall_minutes:
            lines.append(f"| {stage} | {r.wall_minutes[stage]:.2f} | {r.cpu_minutes.get(stage, 0.0):.2f} |")
    lines += [f"| all | {sum(r.wall_minutes.values()):.2f} | {sum(r.cpu_minutes.values()):.2f} |"]
    if r.notes:
        lines += ["", "## Notes", *(f"- {note}" for note in r.notes)]
    return "\n".join(lines) + "\n"


def with_overrides(config: TuneConfig, **changes: Any) -> TuneConfig:
    """``config`` with the options that are not ``None`` replaced (the CLI passes every option)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
