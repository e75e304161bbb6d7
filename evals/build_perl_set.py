"""Build the ``perl-faq`` question set from Debian's perl-doc: an HTML corpus whose FAQ is split over topical pages.

    python evals/build_perl_set.py        # writes evals/sets/perl-faq.jsonl (+ .meta.json), corpus under .bench/

The corpus is every POD page of perl-doc (the reference, the tutorials, perlfaq1–9) turned into HTML by
``pod2html --noindex``: the shape where small chunks lose their page's context — nine FAQ pages by topic
(perlfaq4 "Data Manipulation", perlfaq5 "Files and Formats"…), each answering dozens of questions, beside
two hundred pages that mention the same functions.

Questions are the ``=head2`` headings of perlfaq1–9 with at least five words of answer. Each question's
``<h2>`` is removed from its page, so retrieval must match the answer text, not the question's own title;
the gold is the answer as a span of the page's text as kb extracts it (from the end of the removed heading to
the next heading or the next answer). Nothing else of the question stays on the page: the table of contents
is not generated (``--noindex``), heading ids are not text, and the two pages that list every question
(perlfaq, perltoc) are left out; a few answers name another question in a cross-reference, as written. About 30% of the questions (by hash of the id)
are the tune split. No unanswerable questions: this set measures ranking.
"""

from __future__ import annotations

import hashlib
import html
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kb.document import BlockKind  # noqa: E402
from kb.evaluation.debian import fetch_debian_package  # noqa: E402
from kb.evaluation.questions import write_question_set  # noqa: E402
from kb.parsers.html import parse_html  # noqa: E402

WORK = REPO / ".bench"
SETS = REPO / "evals" / "sets"
CORPUS = WORK / "corpora" / "perl-faq"
RAW = WORK / "perl-faq-html"  # pod2html's pages as written; the corpus is made from them on every run
QUESTION = re.compile(r'<h2 id="[^"]*">(.*?)</h2>\s*', re.DOTALL)
MIN_ANSWER_WORDS = 5
SNIPPET = 80  # characters of an answer's text that locate it again on the page without its heading
# Pages that list every FAQ question (perlfaq is the FAQ's own index, perltoc the table of contents of all of
# perl-doc): left out, or every question would find its own words there.
INDEX_PAGES = {"perlfaq", "perltoc"}


def main() -> None:
    root, version = fetch_debian_package("perl-doc", WORK)
    pods = sorted(p for p in root.glob("usr/share/perl/*/pod/*.pod") if p.stem not in INDEX_PAGES)
    RAW.mkdir(parents=True, exist_ok=True)
    CORPUS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        for pod in pods:
            raw = RAW / f"{pod.stem}.html"
            if not raw.exists():
                subprocess.run(["pod2html", "--noindex", "--quiet", f"--cachedir={cache}", f"--infile={pod}",
                                f"--outfile={raw}"], check=True, capture_output=True)  # fmt: skip
            if not pod.stem.startswith("perlfaq"):
                (CORPUS / raw.name).write_bytes(raw.read_bytes())
    records: list[dict] = []
    for number in range(1, 10):
        records += page_questions(RAW / f"perlfaq{number}.html", CORPUS / f"perlfaq{number}.html")
    for record in records:
        record["split"] = split_of(record["id"])
    meta = write_question_set(SETS, "perl-faq", records, "python evals/build_perl_set.py",
                              corpus=str(CORPUS.relative_to(REPO)), corpus_pages=len(pods), packages={"perl-doc": version})  # fmt: skip
    print(f"perl-faq: {meta['questions']} questions ({meta['tune']} in tune), corpus {CORPUS} ({len(pods)} pages)")


def page_questions(raw: Path, page: Path) -> list[dict]:
    """The questions of one FAQ page (``raw``, as pod2html wrote it); ``page`` is written without their headings."""
    source = raw.read_text(encoding="utf-8")
    found = list(QUESTION.finditer(source))
    original = parse_html(source)
    headings = [b for b in original.blocks if b.kind is BlockKind.HEADING]
    questions = []
    for match in found:
        title = " ".join(html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).split())
        heading = next(h for h in headings if " ".join(h.title.split()) == title)
        after = next((h.start for h in headings if h.start > heading.start), len(original.text))
        answer = original.text[heading.end : after].strip()
        questions.append((title, answer))
    blanked = QUESTION.sub("", source)
    doc = parse_html(blanked)
    starts = [b.start for b in doc.blocks if b.kind is BlockKind.HEADING] + [len(doc.text)]
    located: list[tuple[str, str, int]] = []
    cursor = 0
    for title, answer in questions:
        snippet = " ".join(answer.split())[:SNIPPET]
        start = _find(doc.text, snippet, cursor)
        if start < 0:
            raise SystemExit(f"{page.name}: the answer to {title!r} is not on the blanked page")
        located.append((title, answer, start))
        cursor = start + 1
    records = []
    seen: dict[str, int] = {}
    for i, (title, answer, start) in enumerate(located):
        nexts = [s for s in starts if s > start] + ([located[i + 1][2]] if i + 1 < len(located) else [])
        end = min(nexts)
        while end > start and doc.text[end - 1].isspace():
            end -= 1
        if len(answer.split()) < MIN_ANSWER_WORDS:
            continue
        seen[title] = seen.get(title, 0) + 1  # the same question twice on a page: ids stay unique
        key = title if seen[title] == 1 else f"{title}\0{seen[title]}"
        digest = hashlib.sha1(f"{page.name}\0{key}".encode()).hexdigest()[:8]
        records.append({
            "id": f"{page.stem}-{digest}", "question": title, "answerable": True,
            "gold": [{"doc_id": page.name, "span": [start, end], "anchor": title}],
            "answer": " ".join(answer.split())[:2000],
        })  # fmt: skip
    page.write_text(blanked, encoding="utf-8")
    return records


def _find(text: str, snippet: str, cursor: int) -> int:
    """Where ``snippet`` (whitespace collapsed) starts in ``text`` at or after ``cursor``."""
    pattern = r"\s+".join(re.escape(word) for word in snippet.split())
    match = re.compile(pattern).search(text, cursor)
    return match.start() if match else -1


def split_of(qid: str) -> str:
    return "tune" if int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 10 < 3 else "test"


if __name__ == "__main__":
    main()
