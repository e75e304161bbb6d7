"""Build the ``postgres-exact`` question set: questions that name an exact token, from postgresql-doc-15.

    python evals/build_postgres_set.py        # writes evals/sets/postgres-exact.jsonl (+ .meta.json)

What users type into a documentation search is often the exact name of a thing: a configuration parameter
(``max_wal_senders``), an error code (``40P01``). This set measures whether the ranking finds it, so the
value of the BM25 leg is measured rather than assumed.

- **Parameters**: every ``<dt id="GUC-…">`` of the runtime-config pages (355 in PostgreSQL 15) gives a question
  in one of four phrasings that name the parameter ("What does max_wal_senders control?"); the gold is the
  parameter's own entry (its term and description) as a span of the page's text as kb extracts it.
- **Error codes**: 60 SQLSTATE codes of Appendix A (every 4th row of the table), "What does SQLSTATE 40P01
  mean?"; the gold is the code's row.

The corpus is the whole HTML documentation (1,100+ pages). About 30% of the questions (by hash of the id) are
the tune split.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kb.evaluation.debian import fetch_debian_package  # noqa: E402
from kb.evaluation.questions import write_question_set  # noqa: E402
from kb.parsers.html import parse_html  # noqa: E402

SETS = REPO / "evals" / "sets"
HTML = "usr/share/doc/postgresql-doc-15/html"
PHRASINGS = [
    "What does {name} control?",
    "What is the {name} setting for?",
    "How do I use {name}?",
    "What happens when I change {name}?",
]


def split_of(qid: str) -> str:
    return "tune" if int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 10 < 3 else "test"


def parameter_questions(folder: Path) -> list[dict]:
    out = []
    for page in sorted(folder.glob("runtime-config-*.html")):
        source = page.read_text(encoding="utf-8", errors="replace")
        names = re.findall(r'<dt id="GUC-[A-Z0-9-]+"><span class="term"><code class="varname">([a-z0-9_.]+)</code>', source)
        text = parse_html(source).text
        starts = []
        for name in names:  # each entry's term line "name (type)" in the extracted text, in page order
            match = re.compile(rf"(?m)^{re.escape(name)} \(").search(text, starts[-1] + 1 if starts else 0)
            starts.append(match.start() if match else -1)
        for i, (name, start) in enumerate(zip(names, starts, strict=True)):
            if start < 0:
                continue
            end = next((s for s in starts[i + 1 :] if s > start), len(text))
            qid = f"param-{name}"
            phrasing = PHRASINGS[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(PHRASINGS)]
            out.append(
                {
                    "id": qid,
                    "question": phrasing.format(name=name),
                    "answerable": True,
                    "gold": [{"doc_id": page.name, "span": [start, end], "anchor": name}],
                }
            )
    return out


def error_code_questions(folder: Path) -> list[dict]:
    page = folder / "errcodes-appendix.html"
    text = parse_html(page.read_text(encoding="utf-8", errors="replace")).text
    rows = list(re.finditer(r"(?m)^([0-9A-Z]{5}) \| ([a-z_]+)\s*$", text))
    out = []
    for match in rows[::4][:60]:
        code = match.group(1)
        out.append(
            {
                "id": f"sqlstate-{code}",
                "question": f"What does SQLSTATE {code} mean?",
                "answerable": True,
                "gold": [{"doc_id": page.name, "span": [match.start(), match.end()], "anchor": f"{code} {match.group(2)}"}],
            }
        )
    return out


def main() -> None:
    root, version = fetch_debian_package("postgresql-doc-15", REPO / ".bench")
    folder = root / HTML
    records = parameter_questions(folder) + error_code_questions(folder)
    for record in records:
        record["split"] = split_of(record["id"])
    meta = write_question_set(SETS, "postgres-exact", records, "python evals/build_postgres_set.py",
                              corpus=str(folder.relative_to(REPO)), packages={"postgresql-doc-15": version})  # fmt: skip
    print(f"postgres-exact: {meta['questions']} questions ({meta['tune']} in tune), corpus {folder}")


if __name__ == "__main__":
    main()
