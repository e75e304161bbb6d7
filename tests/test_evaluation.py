"""The evaluation harness itself (issue 21): metrics against a well-kept reference (ir-measures over
pytrec_eval), relevance by coverage, every covered gold credited, the gold resolver on the named examples,
blanking that leaves no trace of the question (on the real python3.11-doc FAQ, slow profile), paired
bootstrap intervals, and audit rows in results.jsonl."""

from __future__ import annotations

import doctest
import json
import random
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kb.evaluation.gold as gold_module
import kb.evaluation.metrics as metrics_module
from kb.evaluation.gold import GoldRef, GoldResolver, covers
from kb.evaluation.metrics import hit_at, mrr_at, ndcg_at, paired_bootstrap, ranking_metrics, recall_at
from kb.evaluation.questions import Question
from kb.evaluation.runner import AnswerRecord, QuestionResult, Retrieved, audit_rows, judge
from kb.knowledge_base import KnowledgeBase
from kb.samples import sample_kb_path
from tests.conftest import write

REPO = Path(__file__).resolve().parent.parent


def test_the_metric_and_gold_doctests_hold() -> None:
    for module in (metrics_module, gold_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


@given(
    ranking=st.lists(st.integers(-1, 4), min_size=0, max_size=15),
    n_gold=st.integers(1, 5),
)
@settings(max_examples=300, deadline=None)
def test_metrics_equal_trec_eval_on_single_gold_items(ranking: list[int], n_gold: int) -> None:
    """Where each item covers at most one gold, kb's metrics are the textbook ones: checked against
    pytrec_eval (through ir-measures), items mapped to documents (a gold found again is a non-relevant duplicate)."""
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import RR, R, Success, nDCG

    ranking = [g if g < n_gold else -1 for g in ranking]
    qrels = [ir_measures.Qrel("q", f"g{i}", 1) for i in range(n_gold)]
    seen, run = set(), []
    for rank, g in enumerate(ranking):
        doc = f"g{g}" if g >= 0 and g not in seen else f"junk{rank}"
        seen.add(g)
        run.append(ir_measures.ScoredDoc("q", doc, float(len(ranking) - rank)))
    reference = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10, R @ 5, R @ 10, Success @ 1, Success @ 5], qrels, run) if run else {}
    ours = ranking_metrics(ranking, n_gold)
    if not run:
        assert ours["ndcg@10"] == ours["mrr@10"] == ours["hit@1"] == 0.0
        return
    assert ours["ndcg@10"] == pytest.approx(reference[nDCG @ 10], abs=1e-9)
    assert ours["mrr@10"] == pytest.approx(reference[RR @ 10], abs=1e-9)
    assert ours["recall@5"] == pytest.approx(reference[R @ 5], abs=1e-9)
    assert ours["recall@10"] == pytest.approx(reference[R @ 10], abs=1e-9)
    assert ours["hit@1"] == reference[Success @ 1] and ours["hit@5"] == reference[Success @ 5]


def test_a_chunk_covering_several_golds_credits_each_once() -> None:
    assert ndcg_at([[0, 1]], 10, n_gold=2) == 1.0  # the ideal: both golds at rank 1
    assert recall_at([[0, 1], [0]], 1, n_gold=3) == pytest.approx(2 / 3)
    assert ndcg_at([[], [0], [0], [0]], 10, n_gold=1) == pytest.approx(1 / 1.584962500721156)  # repeats add nothing
    assert hit_at([[], []], 2) == 0.0 and mrr_at([[], [2]], 10) == 0.5
    assert ranking_metrics([-1, 0, 1], 2) == ranking_metrics([[], [0], [1]], 2)  # older reports still read


def test_relevance_is_coverage_not_a_touch() -> None:
    page = (0, 31_516)  # mod:shutil: the whole page
    assert covers((1_200, 1_900), page)  # a chunk of the page
    assert not covers((0, 4_000), (3_990, 4_200))  # a big chunk sharing ten characters with the answer
    assert covers((0, 4_000), (1_000, 1_300))  # a big chunk that holds the whole answer
    assert not covers((500, 600), (600, 900))  # touching ends


def test_judge_credits_nested_and_neighbouring_golds(tmp_path: Path) -> None:
    text = "# Copying\n\n" + "intro " * 300 + "\n\n## copyfile\n\n" + "copyfile copies " * 10 + "\n\n## copy2\n\n" + "copy2 " * 20
    write(tmp_path, "shutil.md", text)
    start_copyfile = text.index("## copyfile")
    start_copy2 = text.index("## copy2")
    question = Question(
        "library-81c68378",
        "How do I copy a file?",
        True,
        [
            GoldRef("shutil.md", span=(0, len(text))),  # the page-sized mod:shutil
            GoldRef("shutil.md", span=(start_copyfile, start_copy2)),  # func:shutil.copyfile
            GoldRef("shutil.md", span=(start_copy2, len(text))),  # func:shutil.copy2
        ],
    )
    resolver = GoldResolver(tmp_path)
    items = [
        Retrieved("shutil.md", start_copyfile, start_copy2, "a", "copyfile"),
        Retrieved("shutil.md", start_copy2, len(text), "b", "copy2"),
        Retrieved("other.md", 0, 10, "c", "elsewhere"),
    ]
    credited = judge(resolver, question, items)
    assert credited == [[0, 1], [0, 2], []]
    assert recall_at(credited, 2, n_gold=3) == 1.0  # the old judge capped this question at 1/3
    rows = audit_rows(items, credited)
    assert rows[0] == {"doc_id": "shutil.md", "span": [start_copyfile, start_copy2], "gold": [0, 1], "text": "copyfile"}


def test_paired_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    rng = random.Random(1)
    a = [rng.random() for _ in range(80)]
    b = [x - 0.1 + rng.gauss(0, 0.05) for x in a]
    first, second = paired_bootstrap(a, b, seed=7), paired_bootstrap(a, b, seed=7)
    assert first == second  # the same seed, the same interval
    diff, lo, hi = first
    assert lo < diff < hi and lo > 0  # a real difference of 0.1 is told apart from 0
    same = paired_bootstrap(a, a)
    assert same == (0.0, 0.0, 0.0)


def _builder():
    sys.path.insert(0, str(REPO))
    import evals.build_python_sets as builder

    return builder


@pytest.fixture(scope="module")
def python_doc() -> Path:
    from kb.evaluation.debian import fetch_debian_package

    root, _ = fetch_debian_package("python3.11-doc", REPO / ".bench")
    return root


@pytest.mark.slow
def test_method_references_resolve_through_the_inventory_anchor(python_doc: Path, tmp_path: Path) -> None:
    builder = _builder()
    sources = python_doc / builder.SOURCES
    corpus = tmp_path / "corpus"
    for page in ("library/stdtypes.rst.txt", "library/shutil.rst.txt", "library/copy.rst.txt"):
        write(corpus, page, (sources / page).read_text())
    resolver = builder.XrefResolver(corpus, builder.read_inventory(python_doc / "usr/share/doc/python3.11/html/objects.inv"))
    text = (corpus / "library/stdtypes.rst.txt").read_text()
    assert resolver.resolve("meth", "set.copy") is None  # not in the inventory: Sphinx files it as frozenset.copy
    for role, name in (("meth", "dict.copy"), ("meth", "dict.pop"), ("meth", "frozenset.copy")):
        ref = resolver.resolve(role, name)
        assert ref is not None, name
        block = text[ref["span"][0] : ref["span"][1]]
        owner = text.rfind(".. class::", 0, ref["span"][0])
        assert block.lstrip().startswith(f".. method:: {name.split('.')[1]}")
        assert name.split(".")[0] in text[owner : text.index("\n\n", owner)], (name, text[owner : owner + 60])
    copyfile = resolver.resolve("func", "shutil.copyfile")
    module = resolver.resolve("mod", "shutil")
    assert module["span"][0] <= copyfile["span"][0] < copyfile["span"][1] <= module["span"][1]  # nested: reachable


@pytest.mark.slow
def test_blanking_leaves_no_trace_of_the_question_in_its_page(python_doc: Path) -> None:
    builder = _builder()
    sources = python_doc / builder.SOURCES
    leaks = []
    for page in sorted(sources.glob("faq/*.rst.txt")):
        text = page.read_text()
        questions = builder.faq_questions(page.name, text)
        blanked = builder.blank_headings(text, questions)
        assert len(blanked) == len(text) and blanked.count("\n") == text.count("\n")  # offsets unchanged
        for q in questions:
            slug = re.sub(r"[^a-z0-9]+", "-", q.title.lower()).strip("-")
            words = set(re.findall(r"[a-z]{3,}", q.title.lower())) - {"the", "and", "how", "can", "what", "why", "does"}
            outside = blanked[: q.body_start] + blanked[q.end :]
            if slug and slug in re.sub(r"[^a-z0-9]+", "-", outside.lower()):
                leaks.append((page.name, q.title, "slug"))
            for label in re.findall(r"^\.\. _([^:]+):", outside, re.MULTILINE):
                if words and len(words & set(re.findall(r"[a-z]{3,}", label.lower()))) >= 0.6 * len(words):
                    leaks.append((page.name, q.title, f"label {label}"))
            if re.search(r"^\s*\.\. index::", blanked[q.body_start : q.end], re.MULTILINE):
                leaks.append((page.name, q.title, "index entry"))
    assert leaks == []


def test_results_rows_can_be_rejudged(tmp_path: Path) -> None:
    """results.jsonl keeps, per hit, what is needed to judge it again (doc, span, golds, text)."""
    from kb.evaluation.report import write_report
    from kb.evaluation.runner import QuestionResult

    items = [Retrieved("a.md", 0, 100, "n1", "x" * 300)]
    row = QuestionResult("q1", "Q?", True, "test", 1)
    row.stages["fused"] = {"ids": ["n1"], "gold_hits": [[0]], "hits": audit_rows(items, [[0]]), "ms": 1.0}
    row.stages["dense"] = {"ids": ["n1"], "gold_hits": [[]], "hits": audit_rows(items, [[]]), "ms": 1.0}
    write_report(tmp_path, "t", {"kb": [row]}, {"command": "test"})
    saved = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    assert saved["stages"]["fused"]["hits"][0] == {"doc_id": "a.md", "span": [0, 100], "gold": [0], "text": "x" * 200}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"a": "kb/fused", "b": "kb/dense", "metric": "ndcg@10"}.items() <= summary["differences"][0].items()
    assert "95% interval" in (tmp_path / "report.md").read_text()


class _CountingSystem:
    """A System (the runner's protocol) that counts its answers and can fail at the n-th one, as a run
    killed hours into its answers does. The runner and its checkpoint are what is under test, not kb."""

    name = "counting"
    stages = ("fused",)

    def __init__(self, fail_at: int | None = None) -> None:
        self.answered: list[str] = []
        self.fail_at = fail_at

    def retrieve(self, stage: str, question: str, k: int) -> list[Retrieved]:
        return [Retrieved("a.md", 0, 100, f"n-{question}")]

    def answer(self, question: str) -> AnswerRecord:
        if self.fail_at is not None and len(self.answered) + 1 == self.fail_at:
            raise KeyboardInterrupt
        self.answered.append(question)
        return AnswerRecord(f"answer to {question} [1]", False, [Retrieved("a.md", 0, 100, "n")], {"total": 1.0})

    def describe(self) -> dict[str, object]:
        return {}


def test_an_evaluation_cut_short_resumes_without_answering_again(tmp_path: Path) -> None:
    """Answers take hours on a CPU: a run killed after some of them picks up where it stopped, re-answers
    nothing, and ends with the same rows as a run that was never cut."""
    from kb.evaluation.runner import Checkpoint, run

    questions = [Question(f"q{i}", f"Q{i}?", True, [GoldRef("a.md", span=(0, 10))], "", "test") for i in range(5)]
    resolver = GoldResolver(tmp_path)
    write(tmp_path, "a.md", "# A\n\ntext\n")
    ids = {q.id for q in questions}
    checkpoint = Checkpoint(tmp_path / ".partial" / "counting.jsonl", "key-1")
    first = _CountingSystem(fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        run(first, questions, resolver, answer_ids=ids, checkpoint=checkpoint)
    assert first.answered == ["Q0?", "Q1?", "Q2?"]
    # A crash can leave half a line behind: it is dropped, not glued to the next row.
    with checkpoint.path.open("a") as handle:
        handle.write('{"id": "q3", "quest')
    second = _CountingSystem()
    resumed = run(second, questions, resolver, answer_ids=ids, checkpoint=Checkpoint(checkpoint.path, "key-1"))
    assert second.answered == ["Q3?", "Q4?"]
    whole = run(_CountingSystem(), questions, resolver, answer_ids=ids)
    strip = lambda rows: [(r.id, r.answer["text"], r.stages["fused"]["ids"]) for r in rows]  # noqa: E731
    assert strip(resumed) == strip(whole)
    # Rows of another evaluation (another command or index) are set aside, never mixed in.
    third = _CountingSystem()
    run(third, questions, resolver, answer_ids=ids, checkpoint=Checkpoint(checkpoint.path, "key-2"))
    assert len(third.answered) == 5
    assert checkpoint.path.with_suffix(".stale.jsonl").is_file()


class _OtherSectionSystem(_CountingSystem):
    """Ranks another page first, then the gold's page but another of its sections."""

    def retrieve(self, stage: str, question: str, k: int) -> list[Retrieved]:
        return [Retrieved("b.md", 0, 10, "n-b"), Retrieved("a.md", 50, 100, "n-a")]


def test_a_hit_on_the_gold_page_but_another_section_counts_for_documents_not_sections(tmp_path: Path) -> None:
    """The stock recipe's nodes are often whole pages: ``doc hit@k`` says how a ranking fares at that grain,
    next to the section-level metrics that decide kb's defaults."""
    from kb.evaluation.report import summarize, write_report
    from kb.evaluation.runner import run

    write(tmp_path, "a.md", "# A\n\n" + "text " * 40)
    questions = [Question("q1", "Q1?", True, [GoldRef("a.md", span=(0, 10))], "", "test")]
    rows = run(_OtherSectionSystem(), questions, GoldResolver(tmp_path))
    assert rows[0].stages["fused"]["doc_hits"] == [False, True]
    fused = summarize(rows)["stages"]["fused"]
    assert (fused["hit@5"], fused["doc hit@1"], fused["doc hit@5"]) == (0.0, 0.0, 1.0)
    write_report(tmp_path / "report", "t", {"kb": rows}, {"command": "test"})
    assert "| fused | doc hit@5 | 1.000 |" in (tmp_path / "report" / "report.md").read_text()
    # Rows written before documents were judged render without those lines, not with zeros.
    del rows[0].stages["fused"]["doc_hits"]
    write_report(tmp_path / "old", "t", {"kb": rows}, {"command": "test"})
    assert "doc hit@" not in (tmp_path / "old" / "report.md").read_text()  # neither lines nor their caption


def test_the_stock_recipe_is_judged_on_the_text_of_html_pages_not_their_markup(
    sample_kb: KnowledgeBase, tmp_path: Path
) -> None:
    """SimpleDirectoryReader reads HTML as plain text, so the stock recipe's chunk offsets count markup while
    gold spans index kb's extracted text: on PostgreSQL's HTML its nDCG was 0.026, not comparable. Its spans
    are now mapped through the source lines, and a chunk holding the gold section is credited for it."""
    from kb.evaluation.baseline import LlamaIndexBaseline

    head = "<head><style>\n" + "p { margin: 0 }\n" * 400 + "</style></head>\n"  # 6 kB of markup first
    sections = "".join(
        f"<h2>Parameter {name}</h2>\n<p>The {name} parameter sets {what}.\nIts default is {default}.</p>\n"
        for name, what, default in [
            ("work_mem", "the memory of a sort before it spills to disk", "4MB"),
            ("max_connections", "the number of concurrent connections", "100"),
            ("wal_level", "how much information is written to the WAL", "replica"),
        ]
    )
    write(tmp_path, "config.html", f"<html>{head}<body><h1>Server configuration</h1>\n{sections}</body></html>\n")
    resolver = GoldResolver(tmp_path)
    gold = [GoldRef("config.html", "Server configuration > Parameter max_connections")]
    baseline = LlamaIndexBaseline(tmp_path, sample_kb.embed_model, None, chunk_size=256)
    hits = baseline.retrieve("bm25", "max_connections concurrent connections default", 3)
    top = hits[0]
    text = load_file_text(tmp_path / "config.html")
    assert "max_connections parameter sets the number of concurrent connections" in text[top.start : top.end]
    assert resolver.credits(top.doc_id, top.start, top.end, gold) == [0]
    # Markup alone (the style block) maps to no text at all.
    assert baseline._html_spans("config.html", baseline.nodes[0].ref_doc_id).to_text(10, 2000) == (0, 0)


def load_file_text(path: Path) -> str:
    from kb.loading import load_file
    from kb.settings import Settings

    return load_file(path, path.name, Settings()).parsed.text


def test_tune_answers_replays_refuse_unsupported_on_the_same_answers() -> None:
    from evals.tune_answers import refusing_unsupported
    from kb.evaluation.report import summarize
    from kb.evaluation.runner import QuestionResult

    def row(qid: str, claims: int, unsupported: int, on_gold: int) -> QuestionResult:
        answer = {
            "text": "…", "refused": False, "cited": 1, "cited_on_gold": on_gold, "supported": bool(on_gold),
            "citations": [], "token_f1": 0.5, "rouge_l": 0.5, "timings": {"total": 1.0}, "claims": claims,
            "unsupported": [f"s{i}" for i in range(unsupported)], "prompt_tokens": 800,
            "ungrounded": claims > 0 and unsupported == claims,
        }  # fmt: skip
        return QuestionResult(qid, "q", True, "tune", 1, answer=answer)

    rows = [row("all-unsupported", 2, 2, 0), row("one-supported", 2, 1, 1), row("no-claim", 0, 0, 0)]
    replayed = refusing_unsupported(rows)
    assert [r.answer["refused"] for r in replayed] == [True, False, False]
    assert rows[0].answer["refused"] is False  # the measured answers are left as generated
    before, after = summarize(rows)["answers"], summarize(replayed)["answers"]
    assert (before["false_refusals"], after["false_refusals"]) == (0.0, 1 / 3)
    assert after["unsupported_answers"] == 0.5  # one of the two answers still given has an unsupported sentence


def _answered(qid: str, answerable: bool, fused_gold: list[list[int]], answer: dict) -> QuestionResult:
    row = QuestionResult(qid, f"{qid}?", answerable, "test", 1 if answerable else 0)
    items = [Retrieved("a.md", i * 100, i * 100 + 100, f"{qid}-{i}") for i in range(len(fused_gold))]
    row.stages["fused"] = {"ids": [i.node_id for i in items], "gold_hits": fused_gold,
                           "hits": audit_rows(items, fused_gold), "ms": 1.0}  # fmt: skip
    timings = {"embed": 3.0, "retrieve": 4.0, "context": 3.0, "first_token": 1010.0, "total": 3010.0}
    row.answer = {"refused": False, "supported": False, "cited": 0, "cited_on_gold": 0, "timings": timings,
                  "token_f1": None, "rouge_l": None, "prompt_tokens": 500, "unsupported": []} | answer  # fmt: skip
    return row


def test_the_report_says_where_answers_are_won_or_lost_and_renders_again(tmp_path: Path) -> None:
    """A report answers "which stage holds each goal back": did the gold reach the answer's sources, what
    became of it (cited, not cited, refused by the relevance gate before any generation, refused after), and
    how long each stage took; ``kb eval --render`` writes it again from the results, keeping a note added by
    hand where it stood, so a report's new table needs no hours of answers re-run."""
    from typer.testing import CliRunner

    from kb.cli import app
    from kb.evaluation.report import write_report

    def read(gold: list[int]) -> dict:
        return {"read": [{"doc_id": "a.md", "span": [0, 100], "gold": gold, "text": ""}]}

    gated = {"refused": True, "refusal_reason": "no_relevant_sources",
             "timings": {"embed": 3.0, "retrieve": 4.0, "gate": 0.1, "generate": 0.0, "total": 8.0}}  # fmt: skip
    cites = {"supported": True, "cited": 1}
    rows = [
        # Read although not in the fused top 3 (small-to-big reads more than a chunk): judged on what was read.
        *[_answered(f"cited-{i}", True, [[], [], [], [0]], read([0]) | cites) for i in range(4)],
        *[_answered(f"missed-{i}", True, [[0]], read([0])) for i in range(2)],
        _answered("gold-gated", True, [[0]], read([0]) | gated),
        # Refused after generating, though it cited the gold (kb withdraws an unsupported answer): refused.
        *[_answered(f"refused-{i}", True, [[0]], read([0]) | cites | {"refused": True}) for i in range(3)],
        *[_answered(f"unread-answered-{i}", True, [[]], read([])) for i in range(5)],
        *[_answered(f"unread-gated-{i}", True, [[0]], read([]) | gated) for i in range(6)],  # fused top 1, unread
        *[_answered(f"unread-refused-{i}", True, [[]], read([]) | {"refused": True}) for i in range(7)],
        _answered("unanswerable", False, [[]], read([]) | {"refused": True}),
    ]
    unanswered = QuestionResult("no-answer", "?", True, "test", 1)  # in the set, not in the answer sample
    unanswered.stages = rows[0].stages
    context = {"command": "kb eval set.jsonl --answers 6", "kb setup": {"answers": {"sources": 3}}}
    write_report(tmp_path, "Evaluation: t", {"kb": [*rows, unanswered]}, context)
    report = (tmp_path / "report.md").read_text()
    expected = [
        "| the gold was among the sources, and the answer cites it | 4/28 |",
        "| … the answer does not cite it | 2/28 |",
        "| … the relevance gate refused before generating | 1/28 |",
        "| … the generated answer was refused | 3/28 |",
        "| the gold was not among the sources: answered anyway | 5/28 |",
        "| … refused by the relevance gate | 6/28 |",
        "| … the generated answer was refused | 7/28 |",
        "| before the generator | 10 |",  # the gated answers and the unanswerable one have no first token
        "| reading the prompt | 1000 |",
        "| writing the answer | 2000 |",
    ]
    assert [line for line in report.splitlines() if line in expected] == expected
    assert "kb, the sources retrieved for each answer" in report

    # Rows from before the sources and the refusal reason were recorded: judged on the fused top 3, an answer
    # that cites the gold had it, and a refusal without a first token was the gate's.
    for row in rows:
        row.answer.pop("read")
        row.answer.pop("refusal_reason", None)
    write_report(tmp_path, "Evaluation: t", {"kb": rows}, context)
    report = (tmp_path / "report.md").read_text()
    assert "kb, the top 3 it answers from" in report
    expected = [
        "| the gold was among the sources, and the answer cites it | 4/28 |",
        "| … the answer does not cite it | 2/28 |",
        "| … the relevance gate refused before generating | 7/28 |",
        "| … the generated answer was refused | 3/28 |",
        "| the gold was not among the sources: answered anyway | 5/28 |",
        "| … refused by the relevance gate | 0/28 |",
        "| … the generated answer was refused | 7/28 |",
    ]
    assert [line for line in report.splitlines() if line in expected] == expected

    notes = "- **note** (added by hand, 2026-12-06 10:00): corpus fetched as u8\n- **note**: one\n- **note**: two"
    noted = report.replace("- **command**: kb eval set.jsonl", f"{notes}\n- **command**: kb eval set.jsonl (sic)", 1)
    (tmp_path / "report.md").write_text(noted)
    (tmp_path / "summary.json").write_text(  # a report written before the table existed
        json.dumps({**json.loads((tmp_path / "summary.json").read_text()), "summary": {}})
    )
    result = CliRunner().invoke(app, ["eval", "--render", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.md").read_text() == noted
    assert result.output.count("report written") == 1
    missing = CliRunner().invoke(app, ["eval", "--render", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "not a report folder" in missing.output


def test_the_runner_records_the_sources_the_generator_read(sample_kb: KnowledgeBase) -> None:
    """Each answer row carries the sources the generator was given, located and judged, so a report can tell
    a gold that never reached the generator from one it was given and did not cite."""
    from kb.evaluation.runner import KbSystem, run

    sample_kb.use_llm(None)
    question = Question("s01", "What does error E4012 mean and how do I fix it?", True,
                        [GoldRef("product/billing/retries.md", "Payment Retries > Error E4012")], "", "test")  # fmt: skip
    resolver = GoldResolver(sample_kb_path())
    answer = sample_kb.ask(question.question)
    [row] = run(KbSystem(sample_kb), [question], resolver, answer_ids={"s01"})
    read = row.answer["read"]
    assert [(r["doc_id"], tuple(r["span"])) for r in read] == [
        (s.path, (s.span.start, s.span.end)) for s in answer.sources
    ]
    assert any(r["gold"] == [0] for r in read) and row.answer["supported"]
    assert row.answer["refusal_reason"] is None


def test_the_stock_recipe_records_the_sources_its_generator_read(sample_kb: KnowledgeBase) -> None:
    """The stock recipe's answer rows say which sources its generator read, located in their files, so its
    "where the answers are lost" table is judged the same way as kb's. The generator is a fake OpenAI server
    (no second LLM runs here); the retrieval, CitationQueryEngine and the locating are real."""
    from kb.evaluation.baseline import ANSWER_SOURCES, LlamaIndexBaseline
    from kb.llm.openai_compat import OpenAICompatibleLLM
    from tests.fake_openai import FakeOpenAI, serve

    with serve(FakeOpenAI(lambda body: "E4012 means the card issuer declined a retry [1].")) as url:
        llm = OpenAICompatibleLLM(base_url=url, model_name="fake-model")
        baseline = LlamaIndexBaseline(sample_kb_path(), sample_kb.embed_model, llm)
        record = baseline.answer("What does error E4012 mean and how do I fix it?")
    assert baseline.describe()["answer_sources"] == ANSWER_SOURCES
    assert len(record.read) == len(record.sources) >= 1
    for located, source in zip(record.read, record.sources, strict=True):
        text = load_file_text(sample_kb_path() / located.doc_id)
        body = source.text.split("\n", 1)[1] if source.text.startswith("Source ") else source.text
        assert text[located.start : located.end].startswith(body[:80].strip()[:40]), located
    assert [c.doc_id for c in record.cited] == [record.read[0].doc_id]
