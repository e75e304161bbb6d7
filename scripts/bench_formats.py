"""Formats benchmark: PDF libraries compared on real manuals, then PDF, Word and AsciiDoc through kb's ingest.

    python scripts/bench_formats.py            # writes evals/reports/formats.md

Real documents from Debian (downloaded once into .bench/): bash's manuals (bash-doc: bash.pdf without an
outline, bashref.pdf with one, and the same manuals as HTML — the reference text), R's manuals (r-doc-pdf),
GNU Prolog's (gprolog-doc) and gnuplot's (gnuplot-doc); git's AsciiDoc manuals (git-doc ``*.txt``). No
Debian package ships Word files, so the Word set is Node.js's Markdown API docs (nodejs-doc) written to
.docx with python-docx (real heading styles, lists, tables and code) — the parser reads the files, not the
Markdown.

PDF libraries: text extracted by pypdfium2 (what kb uses), pdfminer.six and pypdf, per page, timed; quality
is the word-level F1 of each extraction against the HTML edition of the same manual, and the share of
extracted words that are not words of the HTML (fused or broken words such as "anyremaining", "acro-").
"""

from __future__ import annotations

import collections
import gzip
import html
import io
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kb import KnowledgeBase
from kb.evaluation.debian import fetch_debian_package
from kb.loading import SourceFormat, parse_bytes

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
REPORT = REPO / "evals" / "reports" / "formats.md"
WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def html_text(path: Path) -> str:
    raw = re.sub(r"(?is)<(script|style).*?</\1>", " ", path.read_text(errors="replace"))
    return html.unescape(re.sub(r"<[^>]+>", " ", raw))


def f1(pred: list[str], ref: list[str]) -> float:
    p, r = collections.Counter(pred), collections.Counter(ref)
    overlap = sum((p & r).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def extract_pdfium(data: bytes) -> tuple[str, int]:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(data)
    texts = []
    for page in pdf:
        textpage = page.get_textpage()
        texts.append(textpage.get_text_range())
        textpage.close()
        page.close()
    pages = len(pdf)
    pdf.close()
    return "\n".join(texts), pages


def extract_pdfminer(data: bytes) -> tuple[str, int]:
    from pdfminer.high_level import extract_text
    from pdfminer.pdfpage import PDFPage

    pages = sum(1 for _ in PDFPage.get_pages(io.BytesIO(data)))
    return extract_text(io.BytesIO(data)), pages


def extract_pypdf(data: bytes) -> tuple[str, int]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() or "" for page in reader.pages), len(reader.pages)


def extract_kb(data: bytes) -> tuple[str, int]:
    doc = parse_bytes(data, SourceFormat.PDF)
    return doc.text, len(doc.page_starts)


LIBRARIES = {
    "pypdfium2 (raw text)": extract_pdfium,
    "kb's PDF parser (pypdfium2 + cleanup)": extract_kb,
    "pdfminer.six": extract_pdfminer,
    "pypdf": extract_pypdf,
}


def compare_pdf_libraries(bash: Path) -> list[str]:
    manuals = [("bashref.pdf", "bashref.html"), ("bash.pdf", "bash.html")]
    rows = ["| manual | library | pages | pages/s | word F1 vs HTML | words not in the HTML |", "|---|---|---|---|---|---|"]
    for pdf_name, html_name in manuals:
        data = (bash / pdf_name).read_bytes()
        reference = words(html_text(bash / html_name))
        vocabulary = set(reference)
        for name, extract in LIBRARIES.items():
            tick = time.perf_counter()
            text, pages = extract(data)
            seconds = time.perf_counter() - tick
            got = words(text)
            strange = sum(w not in vocabulary for w in got) / max(1, len(got))
            rows.append(
                f"| {pdf_name} | {name} | {pages} | {pages / seconds:.0f} | {f1(got, reference):.3f} | {strange:.1%} |"
            )
            print(rows[-1], flush=True)
    return rows


def nodejs_docx(target: Path, limit: int = 30) -> Path:
    """Node.js API Markdown pages written as .docx (headings, lists, code, tables)."""
    import docx

    root, _ = fetch_debian_package("nodejs-doc", WORK)
    pages = sorted((root / "usr/share/doc/nodejs/api").glob("*.md.gz"))[:limit]  # Debian gzips them
    target.mkdir(parents=True, exist_ok=True)
    for page in pages:
        document = docx.Document()
        code: list[str] = []
        for line in gzip.decompress(page.read_bytes()).decode("utf-8", "replace").splitlines():
            if line.startswith("```"):
                if code:
                    document.add_paragraph("\n".join(code), style="No Spacing")
                    code = []
                else:
                    code = [""]
                continue
            if code:
                code.append(line)
            elif heading := re.match(r"^(#{1,6})\s+(.*)", line):
                document.add_heading(heading.group(2).strip(), level=min(len(heading.group(1)), 9))
            elif re.match(r"^\s*[*-]\s+", line):
                document.add_paragraph(re.sub(r"^\s*[*-]\s+", "", line), style="List Bullet")
            elif line.strip() and not line.startswith("<!--"):
                document.add_paragraph(line.strip())
        document.save(target / (page.name.removesuffix(".md.gz") + ".docx"))
    return target


def parse_seconds(folder: Path, include: list[str], asciidoc: list[str]) -> float:
    """Parse and chunk every file of the corpus on one core (no embedding): the parsers' own rate."""
    from kb.chunking import HeadingChunker
    from kb.loading import ParseOptions, detect_format

    chunker = HeadingChunker.for_model("all-MiniLM-L6-v2", max_tokens=200, min_tokens=48)
    options = ParseOptions(asciidoc_patterns=tuple(asciidoc))
    tick = time.perf_counter()
    for path in sorted(p for pattern in include for p in folder.rglob(pattern)):
        fmt = detect_format(path.name, tuple(asciidoc))
        if fmt is None:
            continue
        try:
            chunker.chunk(parse_bytes(path.read_bytes(), fmt, options))
        except Exception:
            continue
    return time.perf_counter() - tick


def ingest_formats(corpora: dict[str, tuple[Path, list[str], list[str]]]) -> list[str]:
    rows = [
        "| format | corpus | documents | pages | parse+chunk s (1 core) | documents/s parsed | pages/s parsed | "
        "whole ingest s (with embedding) | chunks | chunks with a header path | skipped |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    samples: list[str] = []
    for name, (folder, include, asciidoc) in corpora.items():
        index = WORK / "bench-formats" / name
        shutil.rmtree(index, ignore_errors=True)
        with KnowledgeBase.open(index, llm_backend="extractive") as kb:
            kb.add_source(name, folder, include=include, asciidoc_patterns=asciidoc)
            tick = time.perf_counter()
            report = kb.reindex(source=name)
            seconds = time.perf_counter() - tick
            records = [c.payload for c in kb.store.scroll()]
        documents = len(report.added)
        pages = sum(1 for r in {(r["doc_id"], r["span"][4] if len(r["span"]) > 4 else 0) for r in records} if r[1])
        with_path = sum(bool(r["header_path"]) for r in records) / max(1, len(records))
        parse = parse_seconds(folder, include, asciidoc)
        rows.append(
            f"| {name} | {folder.relative_to(WORK) if folder.is_relative_to(WORK) else folder} | {documents} | "
            f"{pages or '—'} | {parse:.1f} | {documents / parse:.1f} | {f'{pages / parse:.0f}' if pages else '—'} | "
            f"{seconds:.0f} | {len(records)} | {with_path:.1%} | {len(report.skipped)} |"
        )
        print(rows[-1], flush=True)
        samples.append(f"\n### {name}: three sample chunks\n")
        step = max(1, len(records) // 3)
        for record in sorted(records, key=lambda r: (r["doc_id"], r["chunk_index"]))[step // 2 :: step][:3]:
            span = record["span"]
            where = f"p. {span[4]}" if len(span) > 4 and span[4] else f"lines {span[2]}–{span[3]}"
            text = " ".join(record["text"].split())[:400]
            samples.append(f"- `{record['doc_id']}` ({where}) — **{' > '.join(record['header_path'])}**\n  > {text}\n")
    return rows + samples


def main() -> None:
    bash, bash_version = fetch_debian_package("bash-doc", WORK)
    bash_docs = bash / "usr/share/doc/bash"
    pdf_rows = compare_pdf_libraries(bash_docs)
    r_root, r_version = fetch_debian_package("r-doc-pdf", WORK)
    prolog, prolog_version = fetch_debian_package("gprolog-doc", WORK)
    gnuplot, gnuplot_version = fetch_debian_package("gnuplot-doc", WORK)
    git, git_version = fetch_debian_package("git-doc", WORK)
    pdfs = WORK / "bench-formats-input" / "pdf"
    shutil.rmtree(pdfs, ignore_errors=True)
    pdfs.mkdir(parents=True)
    for source in [*bash_docs.glob("*.pdf"), *(r_root / "usr/share/R/doc/manual").glob("R-*.pdf"),
                   prolog / "usr/share/doc/gprolog-doc/gprolog.pdf", gnuplot / "usr/share/doc/gnuplot/gnuplot.pdf"]:  # fmt: skip
        if source.is_file() and not source.is_symlink():
            shutil.copy(source, pdfs / source.name)
    docx_folder = nodejs_docx(WORK / "bench-formats-input" / "docx")
    corpora = {
        "pdf": (pdfs, ["*.pdf"], []),
        "docx": (docx_folder, ["*.docx"], []),
        "asciidoc": (git / "usr/share/doc/git-doc", ["*.txt"], ["*.txt"]),
    }
    ingest_rows = ingest_formats(corpora)
    lines = [
        "# Formats: PDF, Word, AsciiDoc",
        "",
        "Command: `python scripts/bench_formats.py` (2 cores, CPU only; parse workers = 2, MiniLM on ONNX Runtime, the default for new indexes).",
        f"Packages: bash-doc {bash_version}, r-doc-pdf {r_version}, gprolog-doc {prolog_version}, "
        f"gnuplot-doc {gnuplot_version}, git-doc {git_version}, nodejs-doc (Word set).",
        "",
        "## PDF libraries on the same manuals",
        "",
        "Word F1 of the extracted text against the HTML edition of the same manual (both tokenised the same way),",
        "and the share of extracted words the HTML does not contain (fused or split words).",
        "",
        *pdf_rows,
        "",
        "## Through kb's ingest (parse + chunk + embed + store)",
        "",
        *ingest_rows,
    ]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"written {REPORT}")


if __name__ == "__main__":
    main()
