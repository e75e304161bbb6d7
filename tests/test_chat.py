"""Follow-up questions (kb.chat) and small-to-big context, on real indexes with extractive answers: a follow-up
is made standalone by the rule, retrieval fuses both phrasings, citations are as for ``ask``; a retrieved
chunk grows to its section's neighbours within the token budget, and its citation spans what was shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb import ConfigError, KnowledgeBase
from kb.chat import Turn, is_follow_up, rewrite_by_rule, turns_of
from tests.conftest import write


@pytest.fixture
def extractive(sample_kb: KnowledgeBase) -> KnowledgeBase:
    sample_kb.use_llm(None)
    return sample_kb


def test_a_follow_up_gets_the_previous_questions_subject() -> None:
    turns = [Turn("user", "How do I manually fail over the ledger database?"), Turn("assistant", "Run ..."),
             Turn("user", "And how do I undo it?")]  # fmt: skip
    standalone = rewrite_by_rule(turns)
    assert standalone.startswith("And how do I undo it?") and "ledger" in standalone and "database" in standalone
    assert "Run" not in standalone  # the assistant's words are not the subject


@pytest.mark.parametrize(
    "question,follow_up",
    [("What about restricted ones?", True), ("How do I fix it?", True), ("and on Windows", True),
     ("How long are full database backups kept in the archive bucket?", False)],
)  # fmt: skip
def test_what_counts_as_a_follow_up(question: str, follow_up: bool) -> None:
    assert is_follow_up(question) is follow_up
    turns = [Turn("user", "How do I rotate an API key?"), Turn("user", question)]
    assert (rewrite_by_rule(turns) != question) is follow_up


@pytest.mark.parametrize(
    "messages,field",
    [([], "last message"), ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "last message"),
     ([{"role": "system", "content": "x"}], "messages[0].role"), (["hello"], "messages[0]")],
)  # fmt: skip
def test_malformed_conversations_are_refused_naming_the_message(messages: list, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        turns_of(messages)


def test_chat_answers_the_follow_up_from_the_right_section(extractive: KnowledgeBase) -> None:
    messages = [
        {"role": "user", "content": "How do I manually fail over the ledger database?"},
        {"role": "assistant", "content": "Promote the replica ..."},
        {"role": "user", "content": "And how do I undo it?"},
    ]
    answer = extractive.chat(messages)
    assert "ledger" in answer.question and answer.question != messages[-1]["content"]
    assert not answer.refused and answer.citations
    assert answer.sources[0].doc_id.endswith("runbooks/database-failover.md")
    assert "Rollback" in answer.sources[0].header_path
    # without the conversation the same words retrieve something else first
    alone = extractive.search("And how do I undo it?", k=1)[0]
    assert "Rollback" not in alone.header_path or not alone.doc_id.endswith("database-failover.md")
    single = extractive.chat([{"role": "user", "content": "What does error E4012 mean?"}])
    assert single.question == "What does error E4012 mean?"
    assert single.citations[0].doc_id == extractive.ask("What does error E4012 mean?").citations[0].doc_id


SECTION = """# Deploy guide

## Canary

{paragraphs}

## Unrelated

The cafeteria opens at nine. Lunch is served until two.
"""


def test_small_to_big_grows_a_source_to_its_section_and_cites_what_it_shows(tmp_path: Path) -> None:
    paragraphs = [
        "Start a canary by tagging the release with the canary label in the deploy tool.",
        "The canary receives five percent of traffic for thirty minutes while error rates are compared.",
        "Promote the canary with zqpromote when its error rate stays below the baseline for the whole window.",
        "Abort the canary if the p99 latency grows more than twenty percent over the baseline.",
    ]
    write(tmp_path / "docs", "deploy.md", SECTION.format(paragraphs="\n\n".join(paragraphs)))
    settings = dict(chunk_max_tokens=24, chunk_min_tokens=4, llm_backend="extractive", answer_sources=1)
    with KnowledgeBase.open(tmp_path / "idx", answer_context_tokens=0, **settings) as kb:
        kb.reindex(tmp_path / "docs")
        assert kb.store.count() >= 5
        narrow = kb.ask("When do I promote the canary with zqpromote?")
        assert len(narrow.sources) == 1 and "zqpromote" in narrow.sources[0].text
        assert "five percent" not in narrow.sources[0].text
    with KnowledgeBase.open(tmp_path / "idx", answer_context_tokens=200, **settings) as kb:
        wide = kb.ask("When do I promote the canary with zqpromote?")
        source = wide.sources[0]
        assert len(wide.sources) == 1 and "zqpromote" in source.text
        assert "five percent" in source.text and "p99 latency" in source.text  # its section's neighbours
        assert "cafeteria" not in source.text  # another section comes last and only if the budget allows
        text = (tmp_path / "docs" / "deploy.md").read_text()
        assert text[source.span.start : source.span.end].count("canary") >= 4  # the span is what was shown
        assert source.span.end - source.span.start > narrow.sources[0].span.end - narrow.sources[0].span.start
    with KnowledgeBase.open(tmp_path / "idx", answer_context_tokens=30, **settings) as kb:
        tight = kb.ask("When do I promote the canary with zqpromote?")
        assert kb.embedder is not None and len(tight.sources[0].text) < len(source.text)  # the budget holds


def test_sources_that_meet_are_merged_so_nothing_is_shown_twice(tmp_path: Path) -> None:
    lines = [f"Step {i}: the zqstep procedure moves item {i} to the next shelf in aisle {i}." for i in range(6)]
    write(tmp_path / "docs", "steps.md", "# Steps\n\n" + "\n\n".join(lines) + "\n")
    with KnowledgeBase.open(
        tmp_path / "idx", chunk_max_tokens=24, chunk_min_tokens=4, llm_backend="extractive", answer_sources=4,
        answer_context_tokens=400,
    ) as kb:  # fmt: skip
        kb.reindex(tmp_path / "docs")
        answer = kb.ask("What does the zqstep procedure move?")
    shown = [line for s in answer.sources for line in s.text.split("\n\n")]
    assert len(shown) == len(set(shown))  # no chunk twice
    assert [s.number for s in answer.sources] == list(range(1, len(answer.sources) + 1))
