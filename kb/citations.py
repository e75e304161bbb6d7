"""Answers as data: numbered sources in, ``[n]`` markers out, mapped back to the sections they cite.

    >>> from kb.citations import parse_citations
    >>> text, used, uncited = parse_citations("E4012 is a soft decline [1]. Retry later [7].", n_sources=2)
    >>> text, used, uncited
    ('E4012 is a soft decline [1]. Retry later.', [1], ['Retry later.'])

Markers that point at no source are removed; sentences left without a marker are kept and reported.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from kb.document import Span
from kb.records import ChunkRecord, split_header_path

# Every pattern that starts with a run of blanks looks behind for a non-blank: a match starts where its run
# starts, so a long run of blanks is scanned once, not from each of its characters (quadratic).
_MARKER = re.compile(r"(?<!\s)\s*\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_ONE_LINE_MARKER = r"\[\d+(?:[ \t]*[,;][ \t]*\d+)*\]"  # [1], [1, 3]: a marker that stays on its line
_MARKER_ONLY_LINE = re.compile(rf"(?m)^[ \t]*(?:{_ONE_LINE_MARKER}[ \t]*)+\r?$")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")  # "billing.retry_limit" is not a sentence end
_REFUSALS = ("i don't know", "i do not know", "i don’t know", "not in the sources", "cannot answer")


@dataclass(frozen=True)
class Source:
    """One numbered source handed to the generator (a retrieved chunk)."""

    number: int
    node_id: str
    doc_id: str
    title: str
    header_path: str
    span: Span
    url: str
    text: str
    score: float
    relevance: float  # cosine similarity of the chunk to the question (or the reranker's score)
    source: str = ""  # the kb source it came from (``runbooks``)
    path: str = ""  # its path inside that source

    @classmethod
    def of(cls, number: int, node_id: str, record: ChunkRecord, score: float, relevance: float) -> Source:
        return cls(
            number,
            node_id,
            record.doc_id,
            record.title,
            record.heading,
            record.span,
            record.url,
            record.text,
            score,
            relevance,
            record.source,
            record.path,
        )

    def record(self) -> ChunkRecord:
        """The chunk as a :class:`ChunkRecord` (what a LlamaIndex node of this source is made from)."""
        return ChunkRecord(
            text=self.text,
            doc_id=self.doc_id,
            source=self.source,
            path=self.path,
            title=self.title,
            header_path=split_header_path(self.header_path),
            span=self.span,
            url=self.url,
        )


@dataclass(frozen=True)
class Citation:
    """A source the answer actually cites, with where to find it."""

    number: int
    doc_id: str
    title: str
    header_path: str
    span: Span
    url: str
    quote: str
    node_id: str
    path: str = ""

    @classmethod
    def of(cls, source: Source, quote_chars: int = 500) -> Citation:
        quote = source.text if len(source.text) <= quote_chars else source.text[:quote_chars].rstrip() + "…"
        return cls(
            source.number,
            source.doc_id,
            source.title,
            source.header_path,
            source.span,
            source.url,
            quote,
            source.node_id,
            source.path,
        )


@dataclass
class Answer:
    """A question's answer, its citations, and how it was made."""

    question: str
    text: str
    citations: list[Citation] = field(default_factory=list)
    refused: bool = False
    # "no_relevant_sources" (score floor or gate), "model" (the generator said so), "unsupported" (no source
    # supports its claims) or "unsafe_output" (it repeated kb's instructions)
    refusal_reason: str = ""
    uncited_sentences: list[str] = field(default_factory=list)
    unsupported_sentences: list[str] = field(default_factory=list)  # claims no cited source's words back up
    inferred_citations: list[int] = field(default_factory=list)  # markers kb added, not the generator
    sources: list[Source] = field(default_factory=list)
    reranked: bool = False
    backend: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0  # what the generator read (its own tokens where it can count them; 0: extractive)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_citations(text: str, n_sources: int) -> tuple[str, list[int], list[str]]:
    """Clean ``text`` of markers outside ``1..n_sources``; return it, the cited numbers, uncited sentences."""
    used: list[int] = []

    def keep_valid(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"\s*[,;]\s*", match.group(1))]
        valid = [n for n in numbers if 1 <= n <= n_sources]
        for n in valid:
            if n not in used:
                used.append(n)
        return "".join(f"[{n}]" for n in valid) if valid else ""

    text = text.replace(DROPPED, " ")  # a NUL the model wrote is not a removed marker
    text, code = shield_code(text)

    marker_lines = {line.start() for line in _MARKER_ONLY_LINE.finditer(text)}

    def replace_marker(match: re.Match[str]) -> str:
        lead = match.group(0)[: match.start(1) - 1 - match.start()]
        # A line break before a marker that opens a line of text is the text's own (a list item, a paragraph);
        # markers alone on their line cite the line before and join it.
        alone = match.start() + lead.rfind("\n") + 1 in marker_lines
        return (lead if "\n" in lead and not alone else " " if lead else "") + (keep_valid(match) or DROPPED)

    cleaned = _MARKER.sub(replace_marker, text)
    cleaned = _MARKER_RUN.sub(_dedupe_run, close_gaps(cleaned))
    cleaned = re.sub(r"(\])[ \t]+([.,;:!?])(?=\s|\Z)", r"\1\2", re.sub(r"(?<![ \t])[ \t]+\[", " [", cleaned)).strip()
    cleaned = re.sub(r"(?<! ) +(\[\d+\])", r"\1", cleaned)
    cleaned = re.sub(r"(\S)(\[\d+\])", r"\1 \2", cleaned)
    uncited = [
        unshield(s.strip(), code)
        for s in _SENTENCE_BREAK.split(_move_trailing_markers(cleaned))
        if len(s.split()) >= 2 and not re.search(r"\[\d+\]", s) and any(ch.isalnum() for ch in s)
    ]
    return unshield(cleaned, code), used, uncited


# A fence opens a line (indented, or after a list marker) or follows text when a language names it ("see:
# ```python"); it closes with a run of the same character at least as long that starts a line and opens no
# other block (a marker may follow it: "``` [2]"), or at the end. After text, the blanks before a fence are
# tried from their run's start only (or from its second character after a backtick or tilde): tried from every
# blank, a long run of blanks cost quadratic time (18 s for 40,000 spaces). The language name's blanks are
# possessive for the same reason: a fence and a long run of blanks, cut off at the token limit.
_FENCE_AFTER_TEXT = r"(?=(?:`{3,}|~{3,})[A-Za-z])"
_FENCED = re.compile(
    rf"(?P<pre>^[ \t]*(?:(?:[-*+]|\d+[.)])[ \t]+)?|(?<=[^`~ \t\n])[ \t]*{_FENCE_AFTER_TEXT}"
    rf"|(?<=[`~][ \t])[ \t]*{_FENCE_AFTER_TEXT})"
    r"(?P<code>(?P<fence>`{3,}|~{3,})[ \t]*+[\w+#.-]*+[ \t]*+\r?\n.*?"
    r"(?:(?P<close>\r?\n[ \t]*(?P=fence)[`~]*)(?![\w`~])|\Z))",
    re.DOTALL | re.MULTILINE,
)
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)[^\n\x01]+?(?<!`)\1(?!`)")  # closed by a run as long: ``rst literal``
# Markers at the end of a code line, after a word or a call: not a list literal (``x = [1]``, ``ports: [2]``).
_LINE_END_MARKERS = re.compile(
    rf"(?<![\s=:,(\[{{\]])[ \t]+((?:{_ONE_LINE_MARKER}[ \t]*)+)(?=\r?$)", re.MULTILINE
)
SHIELDED = re.compile(r"\x01(\d+)\x02")
_SHIELDED_AND_MARKERS = re.compile(r"\x01(\d+)\x02((?:[ \t]*\[\d+\])*)")


def shield_code(text: str) -> tuple[str, list[str]]:
    """``text`` with each fenced code block and each `code span` replaced by a placeholder; :func:`unshield`
    puts the code back.

    In code, ``lists[1]`` or ``a[0]`` is indexing, not a citation: left to the marker rules, it became
    ``lists [1]`` or ``a`` and the answer's code stopped working. A marker the model writes at the end of a line
    of a closed block (``patronictl … --force [1]``) cites the block: it moves after the block, so the code can
    be copied. An unclosed block (an answer cut at ``llm_max_tokens``) is left as it is.
    """
    spans: list[str] = []

    def block(match: re.Match[str]) -> str:
        code, markers = match.group("code"), []

        def pull(end: re.Match[str]) -> str:
            markers.extend(re.findall(r"\[[^\]]+\]", end.group(1)))
            return ""

        if match.group("close"):
            code = _LINE_END_MARKERS.sub(pull, code)
        spans.append(code)
        moved = " " + "".join(dict.fromkeys(markers)) if markers else ""
        return f"{match.group('pre')}\x01{len(spans) - 1}\x02{moved}"

    def span(match: re.Match[str]) -> str:
        spans.append(match.group(0))
        return f"\x01{len(spans) - 1}\x02"

    text = _FENCED.sub(block, text.replace("\x01", " "))
    return _INLINE_CODE.sub(span, text), spans


def unshield(text: str, spans: list[str]) -> str:
    """``text`` with the code :func:`shield_code` took out put back. Markers that follow a code block go on
    the line after its closing fence: CommonMark closes a fence only on a line of its own ("``` [1]" would
    carry the rest of the answer into the block)."""

    def put_back(match: re.Match[str]) -> str:
        code, markers = spans[int(match.group(1))], match.group(2)
        newline = "\r\n" if "\r\n" in code else "\n"
        return code + (newline + markers.strip() if markers and "\n" in code else markers)

    return _SHIELDED_AND_MARKERS.sub(put_back, text) if spans else text


_MARKER_RUN = re.compile(r"\[\d+\](?:\s*\[\d+\])+")
DROPPED = "\x00"  # where a marker was removed, until close_gaps closes the gap


_GAP = r"(?:(?<![ \t])[ \t]+|(?<![ \t\x00]))\x00+"  # removed markers, with the blanks before them


def close_gaps(text: str) -> str:
    """``text`` with each ``DROPPED`` place closed up: a removed marker takes the spaces before it when
    punctuation follows ("revoke it [9]." -> "revoke it."). Only there: a space the text itself has before
    punctuation is part of it (reStructuredText's "the :mod:`ctypes` module", "see :ref:`x`")."""
    # A removed marker that opens a line takes the punctuation and spaces after it ("[9]. Foo" -> "Foo").
    text = re.sub(r"(?m)^([ \t]*)\x00+[.,;:!?]*[ \t]*", r"\1", text)
    # Punctuation that ends a clause (followed by a space or the end) pulls the text to it; ":ref:" does not.
    # Each starts where a run of blanks or of removed markers starts: tried inside a run, it took quadratic time.
    text = re.sub(_GAP + r"(?:[ \t]+(?=[.,;:!?](?:\s|\Z))|(?=[.,;:!?](?:\s|\Z)))", "", text)
    return re.sub(_GAP, "", text)


def _dedupe_run(match: re.Match[str]) -> str:
    # "[1][1] [2]" → "[1][2]": a run of markers cites each source once.
    numbers = list(dict.fromkeys(re.findall(r"\d+", match.group(0))))
    return "".join(f"[{n}]" for n in numbers)


def _move_trailing_markers(text: str) -> str:
    # "Claim. [1]" cites the sentence before it: move the marker in front of the full stop for the check.
    return re.sub(r"([.!?])((?:\s*\[\d+\])+)", r"\2\1", text)


_PIECES = re.compile(r"((?<=[.!?])\s+|\n+)")
_WORD = re.compile(r"[a-z0-9_.\-]+")
ATTRIBUTION_OVERLAP = 0.6


def attribute(text: str, sources: list[Source]) -> tuple[str, list[int]]:
    """Add a marker to each uncited sentence that mostly repeats one source's words.

    Small models often copy a passage and forget the marker. A sentence whose words (four or more) appear
    at least 60% in one source gets that source's number; the numbers added are returned so an
    :class:`Answer` can say which citations kb inferred.
    """
    vocabularies = [set(_WORD.findall(s.text.lower())) for s in sources]
    text, code = shield_code(text)  # no marker inside code, and a code span is not split at ". "
    pieces = _PIECES.split(text)
    added: list[int] = []
    for i, piece in enumerate(pieces):
        follows = pieces[i + 2] if i + 2 < len(pieces) else ""
        # "Claim. [2]" already cites the claim: the marker stands in the next piece.
        if i % 2 or _MARKER.search(piece) or (follows and not _MARKER.sub("", follows).strip()):
            continue
        if SHIELDED.fullmatch(piece.strip()):
            continue  # a code block alone: kb does not guess its source
        words = _WORD.findall(unshield(piece, code).lower())  # the words of code spans count
        if len(words) < 4:
            continue
        overlaps = [sum(w in vocab for w in words) / len(words) for vocab in vocabularies]
        best = max(range(len(overlaps)), key=overlaps.__getitem__, default=None)
        if best is not None and overlaps[best] >= ATTRIBUTION_OVERLAP:
            number = sources[best].number
            pieces[i] = f"{piece} [{number}]"
            if number not in added:
                added.append(number)
    return unshield("".join(pieces), code), added


def is_refusal(text: str) -> bool:
    """Whether the generator declined to answer (and cited nothing)."""
    lowered = text.strip().lower()
    return not re.search(r"\[\d+\]", lowered) and any(phrase in lowered for phrase in _REFUSALS)
