"""Cited answers: retrieve → (rerank) → floor check → numbered sources → generate → parse ``[n]``.

    >>> kb = KnowledgeBase.open("indexes/handbook")                          # doctest: +SKIP
    >>> answer = kb.ask("What does error E4012 mean and how do I fix it?")  # doctest: +SKIP
    >>> answer.text, [(c.number, c.doc_id, c.header_path) for c in answer.citations]  # doctest: +SKIP

Two guards keep answers honest. Before generation, when no retrieved chunk is at least
``refusal_floor`` similar to the question, kb refuses without calling the generator. After generation,
an "I don't know" reply, one that repeats the instructions, or one whose claims no source supports
(``refuse_unsupported``) becomes a refusal; markers that point at no source are dropped and sentences without
a citation are reported in ``Answer.uncited_sentences``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from llama_index.core.llms import LLM, ChatMessage
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore

from kb.answerability import signals_for
from kb.citations import Answer, Citation, Source, attribute, is_refusal, parse_citations
from kb.context import expand
from kb.embedding import Embedder
from kb.errors import ConfigError
from kb.grounding import drop_limits, support, ungrounded
from kb.llm.base import ChatBackend
from kb.prompting import ANSWER_WORD, build_messages, echoes_example, leaks_prompt, repeats_instructions
from kb.retrieval import HybridSearch, RetrievedChunk, cosine
from kb.settings import Settings
from kb.tokens import TokenCounter

NO_SOURCES = "I don't know: the knowledge base has nothing relevant enough to answer this question."
MODEL_REFUSAL = "I don't know: the sources found do not contain the answer."
UNSAFE = "I can't answer that from the knowledge base."
UNSUPPORTED = "I don't know: the sources found do not support an answer."
EXTRACT_RELATIVE_FLOOR = 0.8
LEAK_RUN = 8  # words of the instructions that make an answer a leak (leaks_prompt's min_run)
_WORD = re.compile(r"[a-z']+", re.IGNORECASE)

AnswerEvent = str | Answer
"""Items of :meth:`AnswerEngine.stream`: answer text as it is generated, then the final :class:`Answer`."""

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`*(\"'])|\n{2,}")
_NOISE_LINE = re.compile(r"^\s*+(#{1,6}\s|[=\-~^*+`|:]{3,}\s*$|```|\|?\s*:?-{3,})")


class WordsSoFar:
    """The words (runs of one character class, ``pattern``) of a text that only grows, kept in time linear in
    what is appended: a word is final once a character outside the class follows it, so only the last one can
    still grow. ``fold`` lowers each piece before matching, as :func:`leaks_prompt` lowers the whole answer.
    Piece by piece gives the same words: ``str.lower`` maps each character on its own, except a Greek capital
    sigma, which lowers to a non-ASCII letter either way."""

    def __init__(self, pattern: re.Pattern[str], fold: bool = False) -> None:
        self.pattern = pattern
        self.fold = fold
        self.words: list[str] = []
        self.starts: list[int] = []  # offsets in the text as matched (lowered, with fold)
        self.length = 0
        self._open = False  # whether the last word reaches the end, so the next piece may continue it

    def extend(self, piece: str) -> int:
        """Append ``piece``; return the index of the first word it added or changed."""
        first = len(self.words)
        if not piece:
            return first
        scanned = piece.lower() if self.fold else piece
        base, end = self.length, 0
        for match in self.pattern.finditer(scanned):
            if match.start() == 0 and self._open:
                self.words[-1] += match.group()
                first = len(self.words) - 1
            else:
                self.words.append(match.group())
                self.starts.append(base + match.start())
            end = match.end()
        self.length += len(scanned)
        self._open = end == len(scanned)
        return first


class LeakGuard:
    """Releases streamed text only once it cannot be the start of a repeat of kb's instructions.

    :func:`leaks_prompt` recognises a run of ``LEAK_RUN`` words of the instructions. Holding back the last
    ``LEAK_RUN - 1`` words (and the word being written) means the first word of such a run is still held
    when its last word arrives, so a leaking answer is stopped before any of the run reaches the client.
    Each delta costs time in its own length (the runs its words complete), not the answer's: at the largest
    ``llm_max_tokens`` re-reading the whole answer per token took 15 s of CPU.
    """

    def __init__(self) -> None:
        self.text = ""
        self.released = 0
        self.leaked = False
        self._compared = WordsSoFar(ANSWER_WORD, fold=True)  # what leaks_prompt compares
        self._shown = WordsSoFar(_WORD)  # where the held-back words start

    def feed(self, delta: str) -> str:
        self.text += delta
        if repeats_instructions(self._compared.words, self._compared.extend(delta), LEAK_RUN):
            self.leaked = True
            return ""
        self._shown.extend(delta)
        starts = self._shown.starts
        hold = starts[-LEAK_RUN] if len(starts) >= LEAK_RUN else 0
        return self._release(min(hold, len(self.text)))

    def finish(self) -> str:
        """The rest of the answer: every run of it was checked as it arrived."""
        return "" if self.leaked else self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        piece, self.released = self.text[self.released : upto], upto
        return piece


class AnswerEngine:
    """Writes cited answers from a retriever and a generator (``llm=None`` means extractive)."""

    def __init__(
        self,
        retriever: HybridSearch,
        embedder: Embedder,
        settings: Settings,
        llm: LLM | None,
        reranker: BaseNodePostprocessor | None = None,
        counter: TokenCounter | None = None,
    ) -> None:
        self.retriever = retriever
        self.embedder = embedder
        self.settings = settings
        self.llm = llm
        self.reranker = reranker
        self.counter = counter  # counts what the generator reads; None: no small-to-big

    @property
    def backend(self) -> str:
        return "extractive" if self.llm is None else self.llm.metadata.model_name

    def answer(self, question: str, on_token: Callable[[str], None] | None = None, also: Sequence[str] = ()) -> Answer:
        """Answer ``question``; ``on_token`` receives the generated text as it streams; ``also``: other
        phrasings of it retrieved for too (a follow-up as typed, next to its standalone rewrite)."""
        for event in self.stream(question, also):
            if isinstance(event, Answer):
                return event
            if on_token is not None:
                on_token(event)
        raise AssertionError("stream ended without an answer")  # pragma: no cover

    def stream(self, question: str, also: Sequence[str] = ()) -> Iterator[AnswerEvent]:
        """Yield answer text as it is generated, then the final :class:`Answer`."""
        started = time.perf_counter()
        question = self.check(question)
        phrasings = [question, *(self.check(q) for q in also if q.strip() and q.strip() != question)]
        k = self.settings.reranker_candidates if self.reranker else self.settings.answer_sources
        result = self.retriever.search_phrasings(phrasings, k=k, with_relevance=True)
        timings = dict(result.timings)
        hits, relevance, best_rerank = result.hits, result.relevance, 1.0
        tick = time.perf_counter()
        if self.reranker is not None and hits:
            hits, relevance = self._rerank(question, hits, relevance)
            best_rerank = max((h.score for h in hits), default=0.0)
        timings["rerank"] = (time.perf_counter() - tick) * 1e3
        sources = _sources(hits, relevance)
        best = max((s.relevance for s in sources), default=0.0)
        tick = time.perf_counter()
        answerable = self._answerable(question)
        timings["gate"] = (time.perf_counter() - tick) * 1e3
        if best < self.settings.refusal_floor or best_rerank < self.settings.reranker_floor or not answerable:
            timings["generate"] = 0.0
            timings["total"] = (time.perf_counter() - started) * 1e3
            yield self._refusal(question, "no_relevant_sources", NO_SOURCES, sources, timings)
            return
        tick = time.perf_counter()
        sources = self._context(hits, sources)
        timings["context"] = (time.perf_counter() - tick) * 1e3
        tick = time.perf_counter()
        prompt_tokens = 0
        if self.llm is None:
            text = self._extract(question, sources)
            timings["first_token"] = (time.perf_counter() - started) * 1e3
            yield text
        else:
            guard = LeakGuard()
            messages = build_messages(question, sources)
            prompt_tokens = self._prompt_tokens(messages)
            for response in self.llm.stream_chat(messages):
                delta = response.delta or ""
                if delta:
                    if "first_token" not in timings:
                        timings["first_token"] = (time.perf_counter() - started) * 1e3
                    released = guard.feed(delta)
                    if released:
                        yield released
                    if guard.leaked:
                        break  # nothing of the repeated instructions was shown; the answer becomes a refusal
            if not guard.leaked:
                rest = guard.finish()
                if rest:
                    yield rest
            text = guard.text
        timings["generate"] = (time.perf_counter() - tick) * 1e3
        answer = self._finish(question, text, sources, timings)
        answer.prompt_tokens = prompt_tokens
        timings["total"] = (time.perf_counter() - started) * 1e3
        yield answer

    def _rerank(
        self, question: str, hits: list[RetrievedChunk], relevance: list[float]
    ) -> tuple[list[RetrievedChunk], list[float]]:
        """The reranker's choice among ``hits`` (any LlamaIndex node postprocessor: it sees nodes, and what it
        returns — a node it shortened, say — is what the generator reads), scored by it."""
        by_id = {h.node_id: (h.record, r) for h, r in zip(hits, relevance, strict=True)}
        nodes = [NodeWithScore(node=h.record.to_node(h.node_id), score=h.score) for h in hits]
        kept = self.reranker.postprocess_nodes(nodes, query_str=question) if self.reranker is not None else nodes
        # Its text only: the citation (document, span, URL, ACL) stays the stored chunk's.
        ranked = [
            RetrievedChunk(n.node.node_id, n.score or 0.0, replace(by_id[n.node.node_id][0], text=n.node.get_content()))
            for n in kept
        ]
        return ranked, [by_id[h.node_id][1] for h in ranked]

    def _answerable(self, question: str) -> bool:
        """The answerability gate's verdict from both legs' signals (True when no gate is set)."""
        gate = self.settings.answerability_gate
        if gate is None:
            return True
        return gate.probability(signals_for(self.retriever, question)) >= gate.threshold

    def _prompt_tokens(self, messages: list[ChatMessage]) -> int:
        """The prompt's length in the generator's tokens (the embedder's word pieces when it cannot say)."""
        text = "\n".join(m.content or "" for m in messages)
        counted = self.llm.count_tokens(text) if isinstance(self.llm, ChatBackend) else None
        if counted is None and self.counter is not None:
            counted = self.counter.count([text])[0]
        return counted or 0

    def _context(self, hits: list[RetrievedChunk], sources: list[Source]) -> list[Source]:
        """Small-to-big: each source grows to its section's neighbouring chunks within the token budget."""
        budget = self.settings.answer_context_tokens
        if budget <= 0 or self.counter is None:
            return sources
        return expand(self.retriever.store, sources, self.counter, budget, [h.record for h in hits])

    def check(self, question: str) -> str:
        """The question as it will be asked (control characters blanked), or a ConfigError naming why not."""
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("question: expected a non-empty question")
        cleaned = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in question).strip()
        if not cleaned:
            raise ConfigError("question: only control characters; expected a question in words")
        if len(cleaned) > self.settings.max_question_chars:
            raise ConfigError(
                f"question: {len(cleaned):,} characters is over "
                f"max_question_chars={self.settings.max_question_chars:,}; ask a shorter question"
            )
        return cleaned

    def _finish(self, question: str, raw: str, sources: list[Source], timings: dict[str, float]) -> Answer:
        if leaks_prompt(raw):
            return self._refusal(question, "unsafe_output", UNSAFE, sources, timings)
        if is_refusal(raw) or not raw.strip():
            return self._refusal(question, "model", MODEL_REFUSAL, sources, timings)
        text, _, _ = parse_citations(raw, len(sources))
        # "The sources do not cover how to export these random numbers": the prompt's example, copied.
        text, _ = drop_limits(text, lambda sentence: echoes_example(sentence, question, sources))
        if not any(ch.isalnum() for ch in re.sub(r"\[\d+\]", "", text)):  # nothing left but markers
            return self._refusal(question, "model", MODEL_REFUSAL, sources, timings)
        text, inferred = attribute(text, sources)
        text, used, uncited = parse_citations(text, len(sources))
        checks = support(text, sources)
        unsupported = [c.sentence for c in checks if not c.supported]
        if self.settings.refuse_unsupported and ungrounded(checks, sources):
            # No claim is backed by any source (an out-of-corpus question answered from memory, or made up):
            # kb answers from the documents or not at all. The withheld sentences stay inspectable.
            return self._refusal(
                question, "unsupported", UNSUPPORTED, sources, timings, unsupported_sentences=unsupported
            )
        citations = [Citation.of(sources[n - 1]) for n in used]
        return self._answer(
            question,
            text,
            sources,
            timings,
            citations=citations,
            uncited_sentences=uncited,
            unsupported_sentences=unsupported,
            inferred_citations=inferred,
        )

    def _refusal(
        self,
        question: str,
        reason: str,
        text: str,
        sources: list[Source],
        timings: dict[str, float],
        **fields: Any,
    ) -> Answer:
        return self._answer(question, text, sources, timings, refused=True, refusal_reason=reason, **fields)

    def _answer(
        self, question: str, text: str, sources: list[Source], timings: dict[str, float], **fields: Any
    ) -> Answer:
        return Answer(
            question=question,
            text=text,
            sources=sources,
            backend=self.backend,
            timings=timings,
            reranked=self.reranker is not None,
            **fields,
        )

    def _extract(self, question: str, sources: list[Source]) -> str:
        """The sentences of the sources closest to the question, each with its citation."""
        candidates: list[tuple[int, str]] = []
        for source in sources:
            if source.relevance < self.settings.refusal_floor:
                continue
            for sentence in _sentences(source.text):
                candidates.append((source.number, sentence))
        if not candidates:
            return ""
        vectors = self.embedder.embed([question] + [s for _, s in candidates])
        query, rest = vectors[0], vectors[1:]
        scored = sorted(((cosine(query, v), i) for i, v in enumerate(rest)), reverse=True)
        best = scored[0][0]
        chosen: list[int] = []
        per_source: dict[int, int] = {}
        for score, i in scored:
            # Only sentences nearly as close as the best one: filler lowers citation precision.
            if score < best * EXTRACT_RELATIVE_FLOOR or len(chosen) == self.settings.extractive_sentences:
                break
            number = candidates[i][0]
            if per_source.get(number, 0) >= 2:
                continue
            chosen.append(i)
            per_source[number] = per_source.get(number, 0) + 1
        # Keep document order within a source so the extract reads naturally.
        chosen.sort(key=lambda i: (candidates[i][0], i))
        return " ".join(f"{_terminated(candidates[i][1])} [{candidates[i][0]}]" for i in chosen)


def __getattr__(name: str) -> Any:
    # kb's LlamaIndex query engine moved to kb.llamaindex (made on demand): old imports keep working.
    if name == "CitedQueryEngine":
        from kb.llamaindex.query_engine import CitedQueryEngine

        return CitedQueryEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sources(hits: list[RetrievedChunk], relevance: list[float]) -> list[Source]:
    return [
        Source.of(number, hit.node_id, hit.record, hit.score, rel)
        for number, (hit, rel) in enumerate(zip(hits, relevance or [0.0] * len(hits), strict=True), start=1)
    ]


def _sentences(text: str) -> list[str]:
    """Sentences of a chunk; each table row is one (headers and rules dropped), headings are skipped."""
    out: list[str] = []
    prose: list[str] = []
    for line in text.split("\n"):
        if line.lstrip().startswith("|"):
            cells = [c.strip(" `") for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set(":- ") for c in cells):
                out.append(", ".join(c for c in cells if c))
        elif not _NOISE_LINE.match(line):
            prose.append(line)
    out += [" ".join(s.split()) for s in _SENTENCE_SPLIT.split("\n".join(prose))]
    return [s for s in out if len(s.split()) >= 3]


def _terminated(sentence: str) -> str:
    return sentence if sentence.endswith((".", "!", "?", ":")) else sentence + "."
