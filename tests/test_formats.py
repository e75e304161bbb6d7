"""PDF, Word and AsciiDoc (issue 13): files written by real libraries (fpdf2, python-docx) or in the formats'
own syntax, parsed by kb into header paths and page/line spans, indexed, searched and cited with URLs a
reader can follow; real Debian documentation (bash's PDF manual, git's AsciiDoc) in the slow profile."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest

from kb import KnowledgeBase
from kb.document import BlockKind
from kb.loading import SourceFormat, detect_format, parse_bytes
from kb.parsers.asciidoc import parse_asciidoc
from kb.parsers.docx import parse_docx
from kb.parsers.pdf import parse_pdf
from kb.sources import AnchorStyle, slugify
from tests.conftest import write

SMALL = dict(chunk_max_tokens=64, chunk_min_tokens=8, llm_backend="extractive")


def pdf_bytes(outline: bool, pages: int = 3) -> bytes:
    """A manual as a PDF: running header and footer, headings (bookmarked or only set large), a hyphenated word."""
    from fpdf import FPDF

    class Manual(FPDF):
        def header(self) -> None:
            self.set_font("Helvetica", size=8)
            self.cell(0, 6, "ACME Gateway Manual - Confidential", new_x="LMARGIN", new_y="NEXT")

        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("Helvetica", size=8)
            self.cell(0, 6, f"{self.page_no()}", align="C")

    pdf = Manual()
    for n in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 18)
        if outline:
            pdf.start_section(f"Chapter {n}: Topic {n}", level=0)
        pdf.cell(0, 12, f"Chapter {n}: Topic {n}", new_x="LMARGIN", new_y="NEXT")
        for sub in (1, 2):
            pdf.set_font("Helvetica", "B", 14)
            if outline:
                pdf.start_section(f"Section {n}.{sub} details", level=1)
            pdf.cell(0, 10, f"Section {n}.{sub} details", new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("Helvetica", size=11)
            body = (
                f"The gateway retries zqpage{n}s{sub} requests three times before it gives up. "
                "Operators tune the limit in the configuration file and restart the service. " * 3
            )
            pdf.multi_cell(0, 6, body, new_x="LMARGIN", new_y="NEXT")
            pdf.multi_cell(0, 6, "This sentence ends with a hyphenated docu-\nment word for the joining test.",
                           new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


@pytest.mark.parametrize("outline", [True, False], ids=["outline", "font-sizes"])
def test_pdf_headings_pages_running_lines_and_hyphenation(outline: bool) -> None:
    doc = parse_pdf(pdf_bytes(outline))
    headings = [(b.level, b.title) for b in doc.blocks if b.kind is BlockKind.HEADING]
    assert (1, "Chapter 2: Topic 2") in headings and (2, "Section 2.1 details") in headings
    assert len(headings) == 9
    assert "Confidential" not in doc.text  # the running header is gone
    assert not re.search(r"^\s*\d\s*$", doc.text, re.MULTILINE)  # and the page-number footers
    assert "document word" in doc.text and "docu-" not in doc.text
    section = next(b for b in doc.blocks if b.title == "Section 3.2 details")
    assert doc.page_of(section.start) == 3 and len(doc.page_starts) == 3


def test_pdf_is_cited_by_page_with_a_page_url(tmp_path: Path) -> None:
    docs = tmp_path / "manuals"
    (docs).mkdir()
    (docs / "gateway.pdf").write_bytes(pdf_bytes(outline=True))
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.add_source("vendor", docs, url="https://docs.example.com/manuals/{path}", include=["*.pdf"])
        kb.reindex(source="vendor")
        hit = kb.search("zqpage3s2", k=1, mode="bm25")[0]
        assert hit.doc_id == "vendor:gateway.pdf" and hit.header_path == "Chapter 3: Topic 3 > Section 3.2 details"
        assert (hit.span.page_start, hit.span.page_end) == (3, 3) and hit.span.where() == "p. 3"
        assert hit.url == "https://docs.example.com/manuals/gateway.pdf#page=3"
        answer = kb.ask("How many times does the gateway retry zqpage3s2 requests?")
        assert answer.citations and answer.citations[0].url.endswith("#page=3")


def docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = "Billing specification"
    document.add_heading("Billing specification", level=0)
    document.add_heading("Invoices", level=1)
    document.add_paragraph("Invoices are issued on the first day of the month for zqinvoice accounts.")
    document.add_paragraph("Net 30 terms apply", style="List Bullet")
    document.add_paragraph("Late fees are 2 percent", style="List Bullet")
    document.add_heading("Rates", level=2)
    table = document.add_table(rows=3, cols=2)
    for row, (plan, price) in enumerate([("Plan", "Price"), ("Basic", "10 EUR zqrates"), ("Pro", "50 EUR")]):
        table.cell(row, 0).text, table.cell(row, 1).text = plan, price
    custom = document.add_paragraph("Refunds")
    custom.paragraph_format.element.get_or_add_pPr()  # an outline level set on the paragraph, no heading style
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    level = OxmlElement("w:outlineLvl")
    level.set(qn("w:val"), "0")
    custom._p.pPr.append(level)
    document.add_paragraph("Refunds are paid within ten days.")
    out = io.BytesIO()
    document.save(out)
    return _with_footnote(out.getvalue(), anchor="Refunds are paid", note="Ten business days, zqfootnote.")


def _with_footnote(data: bytes, anchor: str, note: str) -> bytes:
    """Add a real footnote part (python-docx cannot write one) and a reference after ``anchor``."""
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            body = source.read(item.filename)
            if item.filename == "word/document.xml":
                text = body.decode()
                at = text.index(anchor)
                end = text.index("</w:r>", at) + len("</w:r>")
                body = (text[:end] + '<w:r><w:footnoteReference w:id="1"/></w:r>' + text[end:]).encode()
            elif item.filename == "word/_rels/document.xml.rels":
                body = body.replace(
                    b"</Relationships>",
                    b'<Relationship Id="rIdFoot" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
                    b'relationships/footnotes" Target="footnotes.xml"/></Relationships>',
                )
            elif item.filename == "[Content_Types].xml":
                body = body.replace(
                    b"</Types>",
                    b'<Override PartName="/word/footnotes.xml" ContentType="application/vnd.openxmlformats-'
                    b'officedocument.wordprocessingml.footnotes+xml"/></Types>',
                )
            target.writestr(item, body)
        target.writestr(
            "word/footnotes.xml",
            f'<w:footnotes xmlns:w="{w}"><w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:t></w:t></w:r></w:p>'
            f'</w:footnote><w:footnote w:id="1"><w:p><w:r><w:t>{note}</w:t></w:r></w:p></w:footnote></w:footnotes>',
        )
    return out.getvalue()


def test_docx_headings_lists_tables_outline_levels_and_footnotes() -> None:
    doc = parse_docx(docx_bytes())
    headings = [(b.level, b.title) for b in doc.blocks if b.kind is BlockKind.HEADING]
    assert headings[:3] == [(1, "Billing specification"), (2, "Invoices"), (3, "Rates")]  # Title above Heading 1
    assert (2, "Refunds") in headings and (2, "Footnotes") in headings
    kinds = {b.kind for b in doc.blocks}
    assert {BlockKind.LIST, BlockKind.TABLE} <= kinds
    table = next(b for b in doc.blocks if b.kind is BlockKind.TABLE)
    assert doc.text[table.start : table.end] == "Plan | Price\nBasic | 10 EUR zqrates\nPro | 50 EUR"
    assert "Refunds are paid within ten days.[1]" in doc.text and "[1] Ten business days, zqfootnote." in doc.text
    assert doc.title == "Billing specification"


def test_docx_is_indexed_with_its_sections_and_the_table_whole(tmp_path: Path) -> None:
    docs = tmp_path / "specs"
    docs.mkdir()
    (docs / "billing.docx").write_bytes(docx_bytes())
    (docs / "legacy.doc").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        report = kb.reindex(docs)
        assert [(s.doc_id, "save the file as .docx" in s.reason) for s in report.skipped] == [("specs:legacy.doc", True)]
        hit = kb.search("zqrates", k=1, mode="bm25")[0]
        assert hit.header_path == "Billing specification > Invoices > Rates" and "Pro | 50 EUR" in hit.text
        assert kb.search("zqfootnote", k=1, mode="bm25")[0].header_path.endswith("Footnotes")


GIT_STYLE = """git-frobnicate(1)
=================

NAME
----
git-frobnicate - Frobnicate the index

[[options]]
OPTIONS
-------
--deep::
\tFrobnicate zqdeep every path.

EXAMPLES
--------
.A listing stays whole
----
$ git frobnicate --deep
$ git frobnicate --shallow
----

[#configuration]
== Configuration

frobnicate.level:: the zqlevel of frobnication.
"""


def test_asciidoc_titles_setext_anchors_and_listing_blocks() -> None:
    doc = parse_asciidoc(GIT_STYLE)
    headings = [(b.level, b.title, b.anchor) for b in doc.blocks if b.kind is BlockKind.HEADING]
    assert headings == [
        (1, "git-frobnicate(1)", ""),
        (2, "NAME", ""),
        (2, "OPTIONS", "options"),
        (2, "EXAMPLES", ""),
        (2, "Configuration", "configuration"),
    ]
    code = next(b for b in doc.blocks if b.kind is BlockKind.CODE)
    assert doc.text[code.start : code.end].count("git frobnicate") == 2  # the listing is one block
    assert doc.title == "git-frobnicate(1)"


def test_asciidoc_txt_files_by_pattern_with_followable_anchors(tmp_path: Path) -> None:
    docs = tmp_path / "git"
    write(docs, "git-frobnicate.txt", GIT_STYLE)
    assert detect_format("git-frobnicate.txt") is SourceFormat.TEXT
    assert detect_format("git-frobnicate.txt", ("*.txt",)) is SourceFormat.ASCIIDOC
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.add_source("git", docs, asciidoc_patterns=["*.txt"], url="https://git-scm.com/docs/{stem}#{anchor}")
        kb.reindex(source="git")
        hit = kb.search("zqdeep", k=1, mode="bm25")[0]
        assert hit.header_path == "git-frobnicate(1) > OPTIONS"
        assert hit.url == "https://git-scm.com/docs/git-frobnicate#options"  # the document's own anchor
        level = kb.search("zqlevel", k=1, mode="bm25")[0]
        assert level.url == "https://git-scm.com/docs/git-frobnicate#configuration"


@pytest.mark.parametrize(
    ("style", "title", "slug"),
    [
        (AnchorStyle.GITHUB, "Rotating an API key (v2)!", "rotating-an-api-key-v2"),
        (AnchorStyle.GITHUB, "Café au lait", "café-au-lait"),
        (AnchorStyle.MKDOCS, "Café au lait", "cafe-au-lait"),
        (AnchorStyle.MKDOCS, "A  --  B", "a-b"),
        (AnchorStyle.SPHINX, "3. Installing kb", "installing-kb"),
        (AnchorStyle.SPHINX, "os.path — Common pathname", "os-path-common-pathname"),
    ],
)
def test_heading_anchors_as_the_publishing_tool_slugs_them(style: AnchorStyle, title: str, slug: str) -> None:
    assert slugify(title, style) == slug


def test_markdown_url_template_uses_slugged_headings_and_own_urls_win(tmp_path: Path) -> None:
    docs = tmp_path / "runbooks"
    write(docs, "deploy/rollback.md", "# Rollback\n\n## Roll back a bad deploy\n\nRun zqrollback now.\n")
    write(docs, "own.md", "---\nurl: https://wiki.example.com/own\n---\n# Own\n\nzqown page.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.add_source("runbooks", docs, url="https://git.example.com/ops/runbooks/blob/main/{path}#{anchor}")
        kb.reindex(source="runbooks")
        hit = kb.search("zqrollback", k=1, mode="bm25")[0]
        assert hit.url == "https://git.example.com/ops/runbooks/blob/main/deploy/rollback.md#roll-back-a-bad-deploy"
        assert kb.search("zqown", k=1, mode="bm25")[0].url == "https://wiki.example.com/own"


@pytest.mark.slow
def test_real_debian_pdf_and_asciidoc(tmp_path: Path) -> None:
    """bash's reference manual (PDF with an outline), its man page (PDF without one) and git's AsciiDoc."""
    from kb.evaluation.debian import fetch_debian_package

    work = Path(__file__).resolve().parent.parent / ".bench"
    bash_root, _ = fetch_debian_package("bash-doc", work)
    git_root, _ = fetch_debian_package("git-doc", work)
    manual = parse_bytes((bash_root / "usr/share/doc/bash/bashref.pdf").read_bytes(), SourceFormat.PDF)
    titles = [b.title for b in manual.blocks if b.kind is BlockKind.HEADING]
    assert "3.1.2 Quoting" in titles and len(manual.page_starts) > 150
    man = parse_bytes((bash_root / "usr/share/doc/bash/bash.pdf").read_bytes(), SourceFormat.PDF)
    assert {"OPTIONS", "INVOCATION", "SHELL GRAMMAR"} <= {b.title for b in man.blocks if b.kind is BlockKind.HEADING}
    assert "General Commands Manual" not in man.text[500:]  # the running header of every page is gone
    commit = parse_asciidoc((git_root / "usr/share/doc/git-doc/git-commit.txt").read_text())
    assert [b.title for b in commit.blocks if b.kind is BlockKind.HEADING][:4] == [
        "git-commit(1)", "NAME", "SYNOPSIS", "DESCRIPTION",
    ]  # fmt: skip
