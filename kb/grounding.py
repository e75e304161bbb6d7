"""Is each sentence of an answer supported by the sources it cites? A check that needs no judge model.

    checks = support(answer.text, answer.sources)
    [c.sentence for c in checks if not c.supported]      # what no cited source says

A sentence is split off with its citation markers. Its *claims* are its content words (stop words and
markers removed, light stemming) and, separately, its *facts*: numbers, versions, durations, identifiers
(``billing.retry_limit``, ``--dry-run``, ``E4012``, ``SQS``). The sentence is supported when

- every fact appears in the text of a source it cites (a wrong number or flag is the hallucination users get
  hurt by, and token overlap alone forgives it), and
- at least ``RECALL`` of its content words appear in the sources it cites (or, for a sentence that cites
  nothing, in any source: such a sentence is counted as uncited elsewhere, here only its content is checked).

Sentences with fewer than ``MIN_WORDS`` content words ("Follow these steps:") make no claim and are not counted
either way. ``ungrounded`` decides whether an answer is withheld, with a lower bar (see there).

The check is validated against a reader's labels of every sentence the local generator writes on the sample
set (``scripts/grounding_report.py`` → ``evals/reports/grounding-validation.md``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kb.citations import DROPPED, SHIELDED, close_gaps, shield_code, unshield
from kb.tokens import STOPWORDS

RECALL = 0.6
BACKED_RECALL = 0.5  # ungrounded(): the lower bar for "some source backs this claim"
MIN_WORDS = 3
_FILLER = "following follow steps step use using used set get make sure see note example"  # how-to filler
_ABSENCE = re.compile(
    r"\b(sources?|documents?|documentation|context)\b[^.]{0,200}?\b(do|does|did)\s*(not|n't|n’t)\s+"
    r"(say|mention|cover|contain|state|specify|describe|explain|include|provide|detail|show|discuss|address)",
    re.IGNORECASE,
)
_MARKER = re.compile(r"\[(\d+)\]")
# The patterns below that start with a run of blanks start only where the run starts (a lookbehind, or a run
# consumed in one piece): tried from each of its characters, a long run of blanks took quadratic time.
_MARKER_LINE = re.compile(r"(?:(?<![ \t])[ \t]+)?\r?\n[ \t]*((?:\[\d+\][ \t]*)+)(?=\r?\n|\Z)")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)|\n+")
_LIST_ITEM = re.compile(r"(?m)^\s*+((?:\d+[.)]|[-*•])\s+)?")  # blank lines are consumed once: see _unlist
_TOKEN = re.compile(r"--?[A-Za-z][\w-]*|[A-Za-z0-9][A-Za-z0-9_.:/\-]*[A-Za-z0-9]|[A-Za-z0-9]")
_FACT = re.compile(r"\d|[_.:/]|^-|[a-z][A-Z]|^[A-Z]{2,}\d*$")
_STOP = STOPWORDS | frozenset(_FILLER.split())


class Evidence(Protocol):
    """What a check reads of a source: its citation number and its text (kb's Source, or any numbered text)."""

    @property
    def number(self) -> int: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class Numbered:
    number: int
    text: str


@dataclass(frozen=True)
class SentenceSupport:
    sentence: str  # without markers
    cited: tuple[int, ...]
    words: int  # content words
    recall: float  # share of them found in the cited sources
    missing_facts: tuple[str, ...] = field(default_factory=tuple)  # facts no cited source contains

    @property
    def is_claim(self) -> bool:
        if is_limit(self.sentence):
            return False  # "The sources do not say how to export them": a limit of the answer, not a claim
        return self.words >= MIN_WORDS or bool(self.missing_facts)

    @property
    def supported(self) -> bool:
        return not self.is_claim or (self.recall >= RECALL and not self.missing_facts)


def is_limit(sentence: str) -> bool:
    """Whether ``sentence`` says what the sources do not cover ("The sources do not say how to export them")."""
    return bool(_ABSENCE.search(sentence))


def stems(text: str) -> frozenset[str]:
    """The content words of ``text``, stemmed as the check compares them."""
    return frozenset(_stem(t) for t in _TOKEN.findall(text.replace("`", " ")) if t.lower() not in _STOP and len(t) > 1)


# A sentence of an answer with what follows it. A list item's marker opens its first sentence; citation markers
# that open a sentence belong to the one before it ("A. [1] B"). A sentence ends at . ! ? (and a closing quote
# or bracket) before a line end or a word that does not go on in lower case ("e.g. as CSV" goes on), and not
# after an abbreviation ("e.g. S3", "v. 2").
_PIECE = re.compile(
    r"(?P<item>(?<![^\n])[ \t]*(?:\d+[.)]|[-*+•◦‣])[ \t]+)?(?P<markers>[ \t]*(?:\[\d+\][ \t]*)*)"
    r"(?P<body>[^\n]*?(?:(?<!\be\.g)(?<!\bi\.e)(?<!\bcf)(?<!\bvs)(?<!\b[vV])[.!?][\"'”’)]*"
    r"(?=[ \t]*(?:\r?\n|\Z)|[ \t]+[^a-z\s])|(?=\r?\n)|\Z))"
    r"(?P<sep>[ \t]*(?:\r?\n)?)"
)
# A sentence whose subject is the sources: "The sources do not cover…", "(However, the documentation does not…".
_SOURCES_SUBJECT = re.compile(
    r"[(\"'“‘*_]*(?:(?:but|however|note|unfortunately)[,:]?\s++)?(?:the|these|this|those|provided|given)?\s*"
    r"(?:provided\s+|given\s+|retrieved\s+)?(?:sources?|documents?|documentation|docs|context)\b",
    re.IGNORECASE,
)


def drop_limits(text: str, stray: Callable[[str], bool]) -> tuple[str, list[str]]:
    """``text`` without the limit sentences that ``stray`` picks, and those sentences.

    Only a whole sentence about the sources goes ("The sources do not cover how to export these logs."): not
    one that also states a claim ("X is kept 30 days [1], but the sources do not say…"), nor one a marker
    cites, nor code. A marker run that opens the dropped sentence stays with the sentence before it; a line
    that held only the dropped sentence goes with it, a list item keeps its number for the rest of its line.
    """
    shielded, code = shield_code(text)
    pieces = list(_PIECE.finditer(shielded))
    out, dropped, skip_blank = "", [], False
    for i, piece in enumerate(pieces):
        if skip_blank and not piece.group(0).strip():
            skip_blank = False
            continue
        skip_blank = False
        following = pieces[i + 1]["markers"].strip() if i + 1 < len(pieces) else ""
        if following or not _limit_to_drop(piece["body"], code, stray):
            out += piece.group(0)
            continue
        dropped.append(unshield(piece["body"], code).strip())
        markers, newline = piece["markers"].strip(), piece["sep"].lstrip(" \t")
        line_start = piece.start() == 0 or shielded[piece.start() - 1] == "\n"
        if markers and line_start:  # "A.\n[2] Limit.": [2] cites A
            out = out.rstrip() + " " + markers + newline
        elif markers:
            out += markers + (newline or " ")
        elif not line_start:
            out = out.rstrip(" \t") + newline if newline else out
        elif piece["item"] and not newline and i + 1 < len(pieces) and pieces[i + 1]["body"].strip():
            out += piece["item"]  # the rest of the item's line follows
        else:  # the whole line goes; so does one of the blank lines around it
            skip_blank = out.endswith("\n\n") or out.endswith("\n\r\n") or not out
    if not dropped:
        return text, []
    return unshield(out, code).rstrip(), dropped


def _limit_to_drop(body: str, code: list[str], stray: Callable[[str], bool]) -> bool:
    if _MARKER.search(body) or any("\n" in code[int(n)] for n in SHIELDED.findall(body)):
        return False  # a cited sentence is a claim; code is never touched
    sentence = unshield(body, code).strip()
    return bool(_SOURCES_SUBJECT.match(sentence)) and is_limit(sentence) and stray(sentence)


def _stem(word: str) -> str:
    word = word.lower()
    for suffix in ("ing", "ies", "ied", "es", "ed", "s", "ly"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _normal(token: str) -> str:
    return token.strip(".:/-").lower()


def _unlist(match: re.Match[str]) -> str:
    # A list item's marker goes with the blanks before it; blanks before a line that is no list item stay.
    return "" if match.group(1) is not None else match.group(0)


def sentences(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """The answer's sentences (list items count as sentences), each with the source numbers it cites.
    A marker run after the full stop ("Claim. [1]") belongs to the sentence before it."""
    shielded, code = shield_code(text)  # ``a[1]`` in code is indexing, not a citation
    shielded = _MARKER_LINE.sub(r" \1", shielded)  # markers alone on their line cite the line before
    moved = _LIST_ITEM.sub(_unlist, re.sub(r"([.!?])((?:\s*\[\d+\])+)", r"\2\1", shielded))
    out = []
    for piece in _SENTENCE.split(moved):
        cited = tuple(dict.fromkeys(int(n) for n in _MARKER.findall(piece or "")))
        piece = (piece or "").replace(DROPPED, " ")  # a NUL in the text is not a removed marker
        bare = re.sub(r"\s+", " ", unshield(close_gaps(_MARKER.sub(DROPPED, piece)), code)).strip()
        if bare and any(ch.isalnum() for ch in bare):
            out.append((bare, cited))
    return out


def check(sentence: str, cited: Sequence[int], sources: Sequence[Evidence]) -> SentenceSupport:
    by_number = {s.number: s for s in sources}
    evidence = [by_number[n] for n in cited if n in by_number] or list(sources)
    tokens = _TOKEN.findall(sentence.replace("`", " "))
    facts = [t for t in tokens if _FACT.search(t)]
    content = [_stem(t) for t in tokens if t.lower() not in _STOP and len(t) > 1]
    found = [t for source in evidence for t in _TOKEN.findall(source.text.replace("`", " "))]
    exact = {_normal(t) for t in found}
    missing = tuple(f for f in facts if _normal(f) not in exact)
    vocabulary = {_stem(t) for t in found}
    recall = sum(word in vocabulary for word in content) / len(content) if content else 0.0
    return SentenceSupport(sentence, tuple(cited), len(content), recall, missing)


def support(text: str, sources: Sequence[Evidence]) -> list[SentenceSupport]:
    """Every sentence of ``text`` checked against the sources it cites."""
    return [check(sentence, cited, sources) for sentence, cited in sentences(text)]


def unsupported(text: str, sources: Sequence[Evidence]) -> list[str]:
    return [c.sentence for c in support(text, sources) if not c.supported]


def ungrounded(checks: Sequence[SentenceSupport], sources: Sequence[Evidence]) -> bool:
    """Whether an answer makes claims and no source backs any of them: grounds to withhold it, not just flag it.

    Withholding costs the user the whole answer, so the bar is lower than a flag's: a claim is backed when
    *any* source the generator read has its facts and ``BACKED_RECALL`` of its content words. A right answer
    with a wrong marker ("API request logs are kept for 14 days [1]", [1] being the monitoring page and [2]
    the retention table) or a paraphrase ("retried four times") is not withheld; an answer about a product no
    source names (its name is a fact no source has) is.
    """
    claims = [c for c in checks if c.is_claim]
    if not claims:
        return False
    for claim in claims:
        anywhere = check(claim.sentence, (), sources)
        if anywhere.recall >= BACKED_RECALL and not anywhere.missing_facts:
            return False
    return True
