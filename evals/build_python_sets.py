"""Build the python-faq and python-faq-xref question sets from Debian's python3.11-doc package.

    python evals/build_python_sets.py          # writes evals/sets/python-faq*.jsonl and the corpora under .bench/

Both sets ask the Python FAQ's own questions (the leaf sections of faq/*.rst.txt: 179 with a written answer).
- ``python-faq``: corpus = all 497 reST sources, with each FAQ question heading blanked out (spaces, so every
  offset stays put). Gold = the answer section as a character span; reference answer = its text. Without
  the heading, a question cannot be matched to its own title: the task is the answer text.
- ``python-faq-xref``: corpus = the reST sources without faq/. Gold = the reference sections the answer
  cross-references (``:func:``, ``:meth:``, ``:class:``, ``:mod:``, ``:ref:``, ``:term:`` …), resolved
  through Sphinx's ``objects.inv`` to the directive block or labelled section that defines them.
  Questions whose answer cross-references nothing resolvable are left out.
Both get the questions of Git's FAQ (``gitfaq`` from Debian's git-doc) as unanswerable questions, except
those the Python docs answer or that are ambiguous without git context (``NOT_UNANSWERABLE``; the check —
BM25 and dense top hits of every question, read by a person — is recorded in evals/sets/unanswerable-check.md).

Blanking leaves no trace of the question: its heading, the ``.. _label:`` anchors right above it (several
are the question's own slug) and the ``.. index::`` entries of its section become spaces (offsets kept).
Cross-references resolve through the ``objects.inv`` name to the directive whose *qualified* name it is
(module, class nesting): ``meth:dict.copy`` is dict's ``copy`` block, not the first ``copy`` on the page.
Each question is put in the ``tune`` split (≈30%, by hash of its id) or ``test``: tune settings on the
first, report on the second. Package versions go to ``evals/sets/<set>.meta.json``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

from kb.document import BlockKind, ParsedDocument
from kb.evaluation.debian import fetch_debian_package
from kb.evaluation.gold import section_spans
from kb.evaluation.questions import write_question_set
from kb.parsers.rst import parse_rst

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
SETS = REPO / "evals" / "sets"
CORPORA = WORK / "corpora"
SOURCES = "usr/share/doc/python3.11/html/_sources"
ROLE = re.compile(r":(?:py:)?(func|meth|class|mod|attr|data|exc|obj|const|ref|term|doc):`([^`]+)`")
ROLE_DOMAINS = {
    "func": ("py:function",),
    "meth": ("py:method", "py:classmethod", "py:staticmethod"),
    "class": ("py:class",),
    "mod": ("py:module",),
    "attr": ("py:attribute", "py:property"),
    "data": ("py:data",),
    "const": ("py:data",),
    "exc": ("py:exception",),
    "obj": ("py:function", "py:class", "py:data", "py:method", "py:attribute", "py:exception"),
    "ref": ("std:label",),
    "term": ("std:term",),
    "doc": ("std:doc",),
}
# gitfaq questions that are not unanswerable here (see evals/sets/unanswerable-check.md).
NOT_UNANSWERABLE = {
    "How do I configure a different editor?": "ambiguous: the Python docs cover editors and IDLE's configuration",
    "How do I read a password or token from an environment variable?": "answered by os.environ and getpass",
    "How do I use hooks to prevent users from making certain changes?": "ambiguous: Python's audit hooks",
    "I'm on Windows and my text files are detected as binary.": "ambiguous: text and binary mode on Windows",
    "I'm on Windows and git diff shows my files as having a `^M` at the end.": "ambiguous: newline translation",
}
LABEL = re.compile(r"^\.\. _[^:\n]+:[ \t]*$", re.MULTILINE)
MODULE = re.compile(r"^[ \t]*\.\. (?:py:)?(?:current)?module:: (\S+)", re.MULTILINE)
DIRECTIVE = re.compile(
    r"^([ \t]*)\.\. (?:py:)?(function|class|method|classmethod|staticmethod|attribute|data|exception|decorator"
    r"|decoratormethod|abstractmethod|coroutinefunction|coroutinemethod|property)::\s+([\w.]+)",
    re.MULTILINE,
)


@dataclass
class FaqQuestion:
    page: str
    title: str
    start: int  # heading start
    body_start: int
    end: int
    answer: str


def main() -> None:
    root, version = fetch_debian_package("python3.11-doc", WORK)
    git_root, git_version = fetch_debian_package("git-doc", WORK)
    sources = root / SOURCES
    pages = sorted(p.relative_to(sources).as_posix() for p in sources.rglob("*.rst.txt"))
    faq_pages = [p for p in pages if p.startswith("faq/") and p != "faq/index.rst.txt"]
    unanswerable = git_faq_questions(git_root / "usr/share/doc/git-doc/gitfaq.txt")

    # --- python-faq: full corpus, question headings blanked ---------------------------------------------
    faq_corpus = CORPORA / "python-faq"
    shutil.rmtree(faq_corpus, ignore_errors=True)
    questions: list[FaqQuestion] = []
    for page in pages:
        text = (sources / page).read_text(encoding="utf-8")
        if page in faq_pages:
            found = faq_questions(page, text)
            questions += found
            text = blank_headings(text, found)
        write(faq_corpus / page, text)
    records = [
        {
            "id": question_id(q),
            "question": q.title,
            "answerable": True,
            "gold": [{"doc_id": q.page, "span": [q.start, q.end], "anchor": q.title}],
            "answer": q.answer,
        }
        for q in questions
    ]
    write_set("python-faq", records, unanswerable, version, git_version, faq_corpus, len(pages))

    # --- python-faq-xref: corpus without the FAQ, gold = cross-referenced definitions ----------------------
    xref_corpus = CORPORA / "python-docs-nofaq"
    shutil.rmtree(xref_corpus, ignore_errors=True)
    for page in pages:
        if page not in faq_pages:
            write(xref_corpus / page, (sources / page).read_text(encoding="utf-8"))
    inventory = read_inventory(root / "usr/share/doc/python3.11/html/objects.inv")
    resolver = XrefResolver(xref_corpus, inventory)
    xref_records = []
    for q in questions:
        body = (sources / q.page).read_text(encoding="utf-8")[q.body_start : q.end]
        gold = resolver.resolve_all(body)
        if gold:
            xref_records.append(
                {"id": question_id(q), "question": q.title, "answerable": True, "gold": gold, "answer": q.answer}
            )
    n_pages = len(pages) - len(faq_pages)
    write_set("python-faq-xref", xref_records, unanswerable, version, git_version, xref_corpus, n_pages)
    print(f"unresolved cross-references: {resolver.unresolved} (of {resolver.seen})")


def faq_questions(page: str, text: str) -> list[FaqQuestion]:
    """Leaf sections (no subsections) below the page title that have a written answer."""
    doc = parse_rst(text)
    headings = [b for b in doc.blocks if b.kind is BlockKind.HEADING]
    out = []
    for i, heading in enumerate(headings):
        nxt = headings[i + 1] if i + 1 < len(headings) else None
        if heading.level < 2 or (nxt is not None and nxt.level > heading.level):
            continue
        end = nxt.start if nxt is not None else len(text)
        answer = " ".join(text[heading.end : end].split())
        if len(answer.split()) >= 5:
            out.append(FaqQuestion(page, heading.title, heading.start, heading.end, end, answer))
    return out


def blank_headings(text: str, questions: list[FaqQuestion]) -> str:
    """The question headings, the labels right above them and the index entries of their sections, as spaces."""
    chars = list(text)

    def blank(start: int, end: int) -> None:
        for i in range(start, end):
            if chars[i] != "\n":
                chars[i] = " "

    for q in questions:
        blank(q.start, q.body_start)
        for start, end in labels_above(text, q.start):
            blank(start, end)
        for start, end in index_entries(text, q.body_start, q.end):
            blank(start, end)
    return "".join(chars)


def labels_above(text: str, heading: int) -> list[tuple[int, int]]:
    """``.. _label:`` lines directly above a heading (blank lines between them allowed)."""
    out = []
    lines_end = heading
    while True:
        before = text.rfind("\n", 0, max(lines_end - 1, 0))
        line_start = before + 1 if before >= 0 else 0
        line = text[line_start:lines_end].rstrip("\n")
        if LABEL.fullmatch(line):
            out.append((line_start, line_start + len(line)))
        elif line.strip():
            return out
        if line_start == 0:
            return out
        lines_end = line_start


def index_entries(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Every ``.. index::`` directive in ``text[start:end]``, with its indented entries."""
    out = []
    for match in re.finditer(r"^([ \t]*)\.\. index::", text[start:end], re.MULTILINE):
        begin = start + match.start()
        block_start, block_end = _indented_block(text, begin, len(match.group(1)))
        out.append((block_start, min(block_end, end)))
    return out


def question_id(q: FaqQuestion) -> str:
    digest = hashlib.sha1(f"{q.page}\0{q.title}".encode()).hexdigest()[:8]
    return f"{Path(q.page).name.split('.')[0]}-{digest}"


def split_of(qid: str) -> str:
    return "tune" if int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 10 < 3 else "test"


def git_faq_questions(path: Path) -> list[str]:
    return [line[:-2].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("::")]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_set(
    name: str, records: list[dict], unanswerable: list[str], version: str, git_version: str, corpus: Path, pages: int
) -> None:
    for i, question in enumerate(unanswerable):
        if question not in NOT_UNANSWERABLE:
            records.append({"id": f"gitfaq-{i:02d}", "question": question, "answerable": False, "gold": []})
    for record in records:
        record["split"] = split_of(record["id"])
    meta = write_question_set(SETS, name, records, "python evals/build_python_sets.py",
                              corpus=str(corpus.relative_to(REPO)), corpus_pages=pages,
                              packages={"python3.11-doc": version, "git-doc": git_version})  # fmt: skip
    print(
        f"{name}: {meta['questions']} questions ({meta['answerable']} answerable, {meta['tune']} in tune), corpus {corpus}"
    )


def read_inventory(path: Path) -> dict[tuple[str, str], str]:
    """Sphinx objects.inv v2 → {(domain:role, name): uri}."""
    raw = path.read_bytes()
    body = raw.split(b"\n", 4)[4]
    out: dict[tuple[str, str], str] = {}
    for line in zlib.decompress(body).decode("utf-8").splitlines():
        match = re.match(r"(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+(\S*)\s+(.*)", line)
        if match:
            name, role, _prio, uri, _disp = match.groups()
            out[(role, name)] = uri.replace("$", name)
    return out


class XrefResolver:
    """Cross-reference → gold span (the directive block or labelled section that defines the target)."""

    def __init__(self, corpus: Path, inventory: dict[tuple[str, str], str]) -> None:
        self.corpus = corpus
        self.inventory = inventory
        self.seen = 0
        self.unresolved = 0
        self._docs: dict[str, ParsedDocument] = {}
        self._directives: dict[str, list[tuple[str, int, int]]] = {}

    def resolve_all(self, body: str) -> list[dict]:
        gold: dict[tuple[str, int, int], dict] = {}
        for role, target in ROLE.findall(body):
            self.seen += 1
            ref = self.resolve(role, _target(target))
            if ref is None:
                self.unresolved += 1
            else:
                gold.setdefault((ref["doc_id"], *ref["span"]), ref)
        return list(gold.values())

    def resolve(self, role: str, name: str) -> dict | None:
        for domain in ROLE_DOMAINS[role]:
            key = (domain, name.lower() if domain in ("std:label", "std:term") else name)
            uri = self.inventory.get(key)
            if uri is None:
                continue
            page, _, anchor = uri.partition("#")
            doc_id = page.removesuffix(".html") + ".rst.txt"
            if not (self.corpus / doc_id).is_file():
                return None  # e.g. the FAQ itself, which this corpus leaves out
            span = self._span(doc_id, domain, name, anchor)
            if span is not None:
                return {"doc_id": doc_id, "span": list(span), "anchor": f"{role}:{name}"}
        return None

    def _doc(self, doc_id: str) -> ParsedDocument:
        if doc_id not in self._docs:
            self._docs[doc_id] = parse_rst((self.corpus / doc_id).read_text(encoding="utf-8"))
        return self._docs[doc_id]

    def _qualified(self, doc_id: str) -> list[tuple[str, int, int]]:
        """(qualified name, start, end) of every Python directive block of a page (module and class nesting)."""
        if doc_id not in self._directives:
            text = self._doc(doc_id).text
            modules = [(m.start(), m.group(1)) for m in MODULE.finditer(text)]
            blocks: list[tuple[str, int, int]] = []
            classes: list[tuple[int, list[str]]] = []  # (indent, qualified names) of the enclosing classes
            for match in DIRECTIVE.finditer(text):
                indent, kind = len(match.group(1)), match.group(2)
                while classes and classes[-1][0] >= indent:
                    classes.pop()
                module = next((name for at, name in reversed(modules) if at < match.start()), "")
                parents = classes[-1][1] if classes else ["" if module == "None" else module]
                names = [
                    declared if not parent or declared.startswith(parent + ".") else f"{parent}.{declared}"
                    for parent in parents
                    for declared in [match.group(3), *_more_signatures(text, match.end(), indent)]
                ]
                start, end = _indented_block(text, match.start(), indent)
                blocks += [(name, start, end) for name in names]
                if kind in ("class", "exception"):
                    classes.append((indent, names))
            self._directives[doc_id] = blocks
        return self._directives[doc_id]

    def _span(self, doc_id: str, domain: str, name: str, anchor: str) -> tuple[int, int] | None:
        doc = self._doc(doc_id)
        text = doc.text
        if domain == "std:doc":
            return (0, len(text))
        if domain == "std:label":
            match = re.search(rf"^\.\. _{re.escape(name)}:\s*$", text, re.MULTILINE | re.IGNORECASE)
            return _section_after(doc, match.end()) if match else None
        if domain == "std:term":
            match = re.search(rf"^([ \t]+){re.escape(name)}[ \t]*$", text, re.MULTILINE | re.IGNORECASE)
            return _indented_block(text, match.start(), len(match.group(1))) if match else None
        if domain == "py:module":
            match = re.search(rf"^\.\. (?:py:)?module:: {re.escape(name)}\s*$", text, re.MULTILINE)
            return _section_after(doc, match.start(), enclosing=True) if match else None
        blocks = self._qualified(doc_id)
        target = anchor or name  # the objects.inv anchor is the fully qualified name
        exact = [(start, end) for qualified, start, end in blocks if qualified == target]
        if exact:
            return exact[0]
        # A page whose directives the walk cannot qualify (unusual markup): an unambiguous last-part match only.
        tails = [(start, end) for qualified, start, end in blocks if qualified.split(".")[-1] == target.split(".")[-1]]
        return tails[0] if len(tails) == 1 else None


def _more_signatures(text: str, after: int, indent: int) -> list[str]:
    """Names of the extra signature lines of a directive (``.. class:: set()`` then ``frozenset()``)."""
    names = []
    for line in text[after:].split("\n")[1:]:
        match = re.match(r"^[ \t]+([\w.]+)\(", line)
        if not line.strip() or match is None or len(line) - len(line.lstrip()) <= indent:
            break
        names.append(match.group(1))
    return names


def _target(raw: str) -> str:
    inner = re.search(r"<([^>]+)>\s*$", raw)
    target = inner.group(1) if inner else raw
    return target.lstrip("~!.").removesuffix("()").strip()


def _indented_block(text: str, start: int, indent: int) -> tuple[int, int]:
    """From ``start`` to the last line indented deeper than ``indent`` (a directive or glossary entry)."""
    first_end = text.find("\n", start)
    first_end = len(text) if first_end < 0 else first_end
    end, pos = first_end, first_end + 1
    while pos < len(text):
        nl = text.find("\n", pos)
        line = text[pos : len(text) if nl < 0 else nl]
        if line.strip():
            if len(line) - len(line.lstrip()) <= indent:
                break
            end = pos + len(line)
        pos = len(text) if nl < 0 else nl + 1
    return (start, end)


def _section_after(doc: ParsedDocument, offset: int, enclosing: bool = False) -> tuple[int, int] | None:
    """The section whose heading follows ``offset`` (or, with ``enclosing``, the one ``offset`` lies in)."""
    spans = sorted(section_spans(doc).values())
    if enclosing:
        inside = [s for s in spans if s[0] <= offset < s[1]]
        return max(inside, key=lambda s: s[0]) if inside else (0, len(doc.text))
    after = [s for s in spans if s[0] >= offset]
    return min(after, key=lambda s: s[0]) if after else None


if __name__ == "__main__":
    main()
