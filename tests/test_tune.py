"""``kb tune`` (kb/tuning): questions → hard negatives → listwise training → gate → install, on the sample KB.

The fast tests use a stand-in question writer (the pipeline takes any LlamaIndex-shaped LLM) and a 1-layer
model trained for a few steps: they check the stages' contracts (negatives follow kb's ranking and never
name the positive, the split is by chunk, the gate's arithmetic, kb.toml edits, install and take-back, the
in-process background run of ``kb serve --tune``). The slow test is the command as a user runs it: a real
subprocess with SmolLM2 writing the questions, killed mid-questions and mid-training, resumed, gated both
ways, installed, run once more in the background at nice 19."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from kb import KnowledgeBase
from kb.cli import app
from kb.samples import sample_kb_path
from kb.tuning.files import read_lines
from kb.tuning.gate import GateThresholds, gate
from kb.tuning.install import install, set_top_level, uninstall
from kb.tuning.negatives import (
    HELDOUT,
    TRAIN,
    Candidate,
    Mined,
    MiningConfig,
    NegativeMiner,
    select_questions,
    split_of,
)
from kb.tuning.pipeline import TuneConfig, Tuner, load_report, start_background
from kb.tuning.questions import QuestionRow, QuestionWriter, read_rows

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


class HeadingAsker:
    """Stands in for the LLM: asks about the passage's heading, in words the passage does not contain."""

    def chat(self, messages):
        where = re.search(r"The passage, from (.*?):\n", messages[0].content).group(1)
        topic = where.split(" > ")[-1].lower()
        reply = f"1. How do I deal with {topic} at my company?\n2. Why would {topic} matter to our team?"
        return SimpleNamespace(message=SimpleNamespace(content=reply))


@pytest.fixture(scope="module")
def built_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample KB ingested once, closed (each test copies it: kb tune writes kb.toml and tune/)."""
    index = tmp_path_factory.mktemp("tune-sample") / "index"
    with KnowledgeBase.open(index) as kb:
        kb.ingest(sample_kb_path())
    return index


@pytest.fixture
def index(built_index: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(built_index, copy)
    return copy


TINY = TuneConfig(questions=30, heldout=0.3, min_heldout=1, layers=1, max_steps=4, batch=4, group=4,
                  checkpoint_seconds=0, min_gain=-1.0)  # fmt: skip


def rows_for(kb: KnowledgeBase, n: int) -> list[QuestionRow]:
    writer = QuestionWriter(kb, HeadingAsker())
    return [writer.ask(point_id, record, ("howto", "why")) for point_id, record in writer.plan(n)]


# -- stage 2: split and negatives -----------------------------------------------------------------------------
def test_questions_split_by_chunk_stably_and_selection_is_a_prefix() -> None:
    rows = [QuestionRow(f"c{i}", f"d{i % 3}", "p", "s", [0, 1], ["H"], f"passage number {i}",
                        [{"question": f"q{i} a?", "style": "howto"}, {"question": f"q{i} b?", "style": "why"}])
            for i in range(40)]  # fmt: skip
    questions = select_questions(rows, None, 0.3)
    by_chunk: dict[str, set[str]] = {}
    for q in questions:
        by_chunk.setdefault(q.chunk_id, set()).add(q.split)
        assert q.split == split_of(q.text, 0.3)  # the chunk's text decides, nothing else
    assert all(len(sides) == 1 for sides in by_chunk.values())  # both questions of a chunk on one side
    assert 0 < sum(q.split == HELDOUT for q in questions) < len(questions)
    assert [q.key for q in select_questions(rows, 7, 0.3)] == [q.key for q in questions[:7]]
    # More questions are taken when the first N hold no held-out one (the gate needs some).
    train_first = sorted(rows, key=lambda r: split_of(r.text, 0.3) == HELDOUT)
    trained = sum(split_of(r.text, 0.3) == TRAIN for r in rows)
    extended = select_questions(train_first, 1, 0.3, min_heldout=1, min_train=1)
    assert len(extended) == 2 * trained + 1 and extended[-1].split == HELDOUT
    # Duplicates are dropped.
    dup = [*rows[:2], replace(rows[2], questions=rows[0].questions)]
    assert len(select_questions(dup, None, 0.3)) == 4


def test_negatives_follow_kb_ranking_never_the_positive_and_resume(index: Path, tmp_path: Path) -> None:
    config = MiningConfig(group=5, candidates=20)
    with KnowledgeBase.open(index) as kb:
        questions = select_questions(rows_for(kb, 12), None, 0.3)
        path = tmp_path / "negatives.jsonl"
        mined = NegativeMiner(kb, config).run(questions, path)
        assert [m.key for m in mined] == [q.key for q in questions]
        for q, m in zip(questions, mined, strict=True):
            ranking = kb.hybrid_search(30).search(q.question, k=30).hits
            ids = [h.node_id for h in ranking]
            if q.split == TRAIN:
                assert len(m.negatives) == config.group - 1
                for neg in m.negatives:
                    assert neg.chunk_id != q.chunk_id and neg.text != q.text  # never the positive
                    assert neg.doc_id != q.doc_id  # outside the positive's document
                    if neg.rank >= 0:  # from kb's own fused ranking, ranks 3–30
                        assert 2 <= neg.rank < 30 and ids[neg.rank] == neg.chunk_id
                assert m.positive_rank == next((i for i, n in enumerate(ids) if n == q.chunk_id), -1)
            else:  # the candidates the reranker reads at query time, with their fused scores
                top = kb.hybrid_search(20).search(q.question, k=20).hits
                assert [c.chunk_id for c in m.candidates] == [h.node_id for h in top]
                assert [c.score for c in m.candidates] == pytest.approx([h.score for h in top])
                assert all(m.candidates[i].chunk_id == q.chunk_id or m.candidates[i].text == q.text for i in m.gold)
        # Resume: a kill cut the last line in half; the next run mines that question only.
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
        again = NegativeMiner(kb, config).run(questions, path)
    assert [m.key for m in again] == [q.key for q in questions]
    assert len(list(read_lines(path))) == len(questions)  # nothing mined twice, the torn line skipped


# -- stage 3: the loss --------------------------------------------------------------------------------------
def test_listwise_loss_prefers_the_positive_and_ignores_padding() -> None:
    import torch

    from kb.tuning.train import listwise_loss

    full = torch.ones(2, 3, dtype=torch.bool)
    right = listwise_loss(torch.tensor([[5.0, 0.0, 0.0]]), full[:1])
    wrong = listwise_loss(torch.tensor([[0.0, 5.0, 0.0]]), full[:1])
    assert right < 0.02 < 4.0 < wrong
    padded = torch.tensor([[True, True, False]])
    assert listwise_loss(torch.tensor([[1.0, 2.0, 99.0]]), padded) == pytest.approx(
        listwise_loss(torch.tensor([[1.0, 2.0]]), torch.ones(1, 2, dtype=torch.bool)).item()
    )


# -- stage 4: the gate --------------------------------------------------------------------------------------
def heldout_items(n: int, gold_at: int) -> list[Mined]:
    items = []
    for i in range(n):
        candidates = [Candidate(f"c{j}", "d", f"t{j}", j, 1.0 / (10 + j)) for j in range(20)]
        items.append(Mined(f"k{i}", HELDOUT, f"q{i}?", "howto", f"c{gold_at}", f"t{gold_at}", gold_at,
                           candidates=candidates, gold=[gold_at]))  # fmt: skip
    return items


def test_gate_chooses_the_blend_and_installs_only_on_a_real_gain() -> None:
    items = heldout_items(10, gold_at=5)  # fused puts the positive 6th
    knows = {m.key: [3.0 if j == 5 else 0.0 for j in range(20)] for m in items}  # the model puts it first
    result = gate(items, knows, GateThresholds(min_gain=0.03))
    assert result.fused.ndcg10 == pytest.approx(1 / np.log2(7), abs=1e-4) and result.fused.hit3 == 0.0
    assert result.passed and result.reranked.hit1 == 1.0 and result.gain > 0.5
    assert result.blend == min(float(b) for b, f in result.blends.items() if f.ndcg10 == result.reranked.ndcg10)
    assert "the gate passes" in result.reason
    wrong = {m.key: [3.0 if j == 19 else 0.0 for j in range(20)] for m in items}  # the model buries it
    failed = gate(items, wrong, GateThresholds(min_gain=0.03))
    assert not failed.passed and "does not beat fused" in failed.reason and "+0.030" in failed.reason
    assert not gate(items[:3], knows, GateThresholds(min_questions=5)).passed  # too few: no verdict
    assert "only 3 held-out" in gate(items[:3], knows, GateThresholds(min_questions=5)).reason


def test_gate_refuses_a_hit3_drop_even_with_an_ndcg_gain() -> None:
    near = heldout_items(3, gold_at=2)  # fused: 3rd (a hit@3)
    far = [replace(m, key=f"far{i}") for i, m in enumerate(heldout_items(1, gold_at=12))]  # fused: 13th
    logits = {m.key: [1.0 if j in (0, 1, 3) else 0.0 for j in range(20)] for m in near}  # 3rd → 4th
    logits |= {m.key: [5.0 if j == 12 else 0.0 for j in range(20)] for m in far}  # 13th → 1st
    result = gate(near + far, logits, GateThresholds(min_gain=-1.0), blends=(1.0,))
    assert result.gain > 0 and result.reranked.hit3 < result.fused.hit3
    assert not result.passed and "hit@3 drops" in result.reason


# -- stage 5: kb.toml ---------------------------------------------------------------------------------------
def test_install_edits_only_its_line_and_take_back_restores_it(tmp_path: Path) -> None:
    index = tmp_path / "idx"
    (index / "tune" / "reranker-x").mkdir(parents=True)
    original = ('# my settings\nllm_backend = "extractive"\nreranker_model = "/models/mine"  # hand-picked\n\n'
                '[[sources]]\nname = "docs"\npath = "docs"\n')  # fmt: skip
    (index / "kb.toml").write_text(original)
    assert install(index, index / "tune" / "reranker-x", index / "tune") == "tune/reranker-x"
    text = (index / "kb.toml").read_text()
    assert tomllib.loads(text)["reranker_model"] == "tune/reranker-x"
    assert text.replace('reranker_model = "tune/reranker-x"\n', "") == original.replace(
        'reranker_model = "/models/mine"  # hand-picked\n', ""
    )
    install(index, index / "tune" / "reranker-x", index / "tune")  # again: the user's line is still remembered
    assert uninstall(index, index / "tune")
    assert (index / "kb.toml").read_text() == original
    assert not uninstall(index, index / "tune")  # nothing of ours left to take back
    # A file with no top-level keys, or none at all.
    assert set_top_level("[x]\na = 1\n", "k", "v")[0] == 'k = "v"\n[x]\na = 1\n'
    assert set_top_level("", "k", "v") == ('k = "v"\n', None)


# -- the whole pipeline, in process (kb serve --tune) -----------------------------------------------------------
def test_tune_in_the_background_of_an_open_kb_installs_swaps_and_a_failing_gate_takes_it_back(index: Path) -> None:
    with KnowledgeBase.open(index) as kb:
        assert kb.reranker is None  # the stock cross-encoder is not reachable offline
        thread = start_background(kb, TINY, llm=HeadingAsker())
        thread.join(timeout=600)
        assert not thread.is_alive()
        state = json.loads((index / "tune" / "state.json").read_text())
        assert state["nice"] == 19 and state["stage"] == "done" and state["finished"]
        report = load_report(index)
        assert report is not None and report.installed and report.complete, report.install_note if report else None
        model = Path(report.model["path"])
        assert kb.reranker is not None and kb.settings.reranker_model == str(model.resolve())  # swapped live
        assert kb.search("How do I rotate an API key?", k=3, rerank=True)[0].rerank_score is not None
    assert tomllib.loads((index / "kb.toml").read_text())["reranker_model"] == f"tune/{model.name}"
    card = json.loads((model / "kb-reranker.json").read_text())
    assert card["blend"] == report.gate["blend"] and card["trained_by"] == "kb tune"
    assert (model / "model-int8.onnx").is_file()
    q, n, t = report.questions, report.negatives, report.training
    assert q["used"] >= 30 and q["train"] > 0 and q["heldout"] > 0 and sum(q["styles"].values()) == q["used"]
    assert n["per_question"] == 3.0 and t["steps"] == 4 and len(t["loss_curve"]) == 4
    assert report.gate["questions"] == q["heldout"] and set(report.wall_minutes) >= {"questions", "train", "gate"}

    with KnowledgeBase.open(index) as kb:  # a later open reranks with it; kb status names it
        assert kb.reranker is not None and kb.status().reranker["active"]
        assert kb.reranker.blend == report.gate["blend"]
    status = json.loads(runner.invoke(app, ["status", "--kb", str(index), "--json"]).stdout)
    assert status["reranker"]["active"] and status["reranker"]["model"].endswith(model.name)

    # Again with a bar no model can clear: nothing is redone, the gate fails, the install is taken back.
    lines = (index / "tune" / "questions.jsonl").read_text()
    failed = Tuner(index, replace(TINY, min_gain=2.0), llm=HeadingAsker()).run()
    assert (index / "tune" / "questions.jsonl").read_text() == lines
    assert failed.training["steps"] == 4 and failed.training["resumed_at"] == [] and failed.model["path"] == str(model)
    assert not failed.installed and "does not beat fused" in failed.install_note and "taken back" in failed.install_note
    assert "reranker_model" not in tomllib.loads((index / "kb.toml").read_text())
    with KnowledgeBase.open(index) as kb:
        assert kb.reranker is None
    shown = runner.invoke(app, ["tune", "--kb", str(index), "--report"])
    assert shown.exit_code == 0 and "Not installed" in shown.stdout and "Gate: FAIL" in shown.stdout
    assert "| fused |" in shown.stdout and "blend 0.5" in shown.stdout
    status_text = runner.invoke(app, ["tune", "--kb", str(index), "--status"]).stdout
    assert "stage done" in status_text and "no tuned reranker" in status_text


def test_status_and_report_before_any_run(index: Path) -> None:
    state = Tuner(index).status()
    assert state["stage"] == "not started" and not state["running"] and state["questions"]["written"] == 0
    shown = runner.invoke(app, ["tune", "--kb", str(index), "--report"])
    assert shown.exit_code == 2 and "no kb tune report" in shown.stderr


def test_extractive_index_says_how_to_get_a_question_writer(index: Path) -> None:
    (index / "kb.toml").write_text('llm_backend = "extractive"\n')
    result = runner.invoke(app, ["tune", "--kb", str(index), "--questions", "4"])
    assert result.exit_code == 2 and "needs an LLM to write questions" in result.stderr


# -- the command as a user runs it -------------------------------------------------------------------------------
needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None and not os.environ.get("CI"),
    reason="llama-cpp-python not installed (scripts/install.sh builds it)",
)


def kb_tune(index: Path, *options: str) -> list[str]:
    from kb.llm.local import smollm2_gguf

    # --epochs 12: six steps (--steps caps them) from a single training group. How many of SmolLM2's questions
    # pass the filters depends on the llama.cpp build's rounding (AVX2 vs AVX-512, flash attention); with
    # the default two epochs, five questions left one group, one step, and nothing to kill mid-training.
    return [sys.executable, "-m", "kb.cli", "tune", "--kb", str(index), "--questions", "6", "--heldout", "0.5",
            "--min-heldout", "1", "--layers", "2", "--steps", "6", "--epochs", "12", "--batch", "2", "--group", "4",
            "--checkpoint-seconds", "0", "--llm-model-path", str(smollm2_gguf()), "--llm-max-tokens", "64",
            *options]  # fmt: skip


def run_until(command: list[str], ready, timeout: float) -> subprocess.Popen:
    """Start ``command``; return once ``ready()`` holds while it still runs (then the caller kills it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None:
            raise AssertionError(
                f"kb tune ended (rc {child.returncode}) before the kill:\n{child.stderr.read()[-3000:]}"
            )
        assert time.monotonic() < deadline, "kb tune made no progress in time"
        time.sleep(0.2)
    return child


def kill(child: subprocess.Popen) -> None:
    assert child.poll() is None  # still running: the kill lands mid-run
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    child.stderr.close()


@pytest.mark.slow
@needs_llama
def test_kb_tune_command_with_smollm2_resumes_after_kills_gates_and_installs(index: Path) -> None:
    tune = index / "tune"
    questions = tune / "questions.jsonl"
    train_state = tune / "train" / "train-state.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    # 1. Killed while the LLM writes questions, once a chunk is done.
    child = run_until(kb_tune(index, "--min-gain", "2"), lambda: len(read_rows(questions)) >= 1, 900)
    kill(child)
    before = read_rows(questions)
    assert before and not json.loads((tune / "state.json").read_text())["finished"]

    # 2. Resumed, killed again in training once two steps are checkpointed.
    def trained_two() -> bool:
        try:
            return json.loads(train_state.read_text())["checkpointed"] >= 2
        except (OSError, ValueError, KeyError):
            return False

    kill(run_until(kb_tune(index, "--min-gain", "2"), trained_two, 1800))
    killed_at = json.loads(train_state.read_text())["checkpointed"]
    rows = read_rows(questions)
    assert [r.chunk_id for r in rows[: len(before)]] == [r.chunk_id for r in before]  # kept, not rewritten
    assert len({r.chunk_id for r in rows}) == len(rows)  # no chunk asked twice

    # 3. To the end: nothing redone, training resumed where it was killed; the impossible bar fails the gate.
    done = subprocess.run(kb_tune(index, "--min-gain", "2"), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = load_report(index)
    assert report is not None and report.complete
    assert [r.chunk_id for r in read_rows(questions)] == [r.chunk_id for r in rows]
    # Trained to the end of its plan (≤ --steps 6; fewer when SmolLM2's questions leave fewer training groups).
    assert report.training["resumed_at"] == [killed_at] < [report.training["steps"]]
    assert report.training["steps"] == report.training["planned_steps"] <= 6
    assert not report.installed and "does not beat fused" in report.install_note
    assert "Gate: FAIL" in done.stdout
    toml = index / "kb.toml"
    assert not toml.exists() or "reranker_model" not in toml.read_text()
    with KnowledgeBase.open(index) as kb:
        assert kb.reranker is None

    # 4. The same run in the background (nice 19) with a bar it clears: gated again from what is there, installed.
    started = subprocess.run(kb_tune(index, "--min-gain", "-1", "--background"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert started.returncode == 0 and "pid" in started.stdout, started.stderr
    deadline = time.monotonic() + 600
    while True:
        status = json.loads(subprocess.run([sys.executable, "-m", "kb.cli", "tune", "--kb", str(index), "--status",
                                            "--json"], cwd=REPO, env=env, capture_output=True, text=True).stdout)  # fmt: skip
        if not status["running"] and status["stage"] == "done" and status["installed"]:
            break
        assert time.monotonic() < deadline, (tune / "tune.log").read_text()[-3000:]
        time.sleep(1)
    assert status["nice"] == 19
    report = load_report(index)
    assert report.installed and report.training["resumed_at"] == [killed_at]
    assert [r.chunk_id for r in read_rows(questions)] == [r.chunk_id for r in rows]
    with KnowledgeBase.open(index) as kb:
        assert kb.reranker is not None and Path(kb.settings.reranker_model).name == Path(report.model["path"]).name
    wide = {**env, "COLUMNS": "400"}  # not a terminal: rich would cut the table (and the long tmp paths) at 80
    shown = subprocess.run([sys.executable, "-m", "kb.cli", "status", "--kb", str(index)], cwd=REPO, env=wide,
                           capture_output=True, text=True)  # fmt: skip
    assert Path(report.model["path"]).name in shown.stdout.replace("\n", "")
