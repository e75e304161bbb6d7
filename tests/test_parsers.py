"""Format parsers: headings with levels, blocks with exact spans, HTML line mapping."""

from __future__ import annotations

from kb.document import BlockKind
from kb.parsers.html import parse_html
from kb.parsers.markdown import parse_markdown
from kb.parsers.rst import parse_rst


def kinds(doc) -> list[tuple[str, int, str]]:
    return [(b.kind.value, b.level, b.title) for b in doc.blocks]


def test_markdown_blocks_levels_and_exact_spans() -> None:
    text = "# Top\n\nPara one.\n\n## Sub\n\n```python\nx = 1\n\ny = 2\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nSetext\n------\n\n- item\n- item 2\n"
    doc = parse_markdown(text)
    assert kinds(doc) == [
        ("heading", 1, "Top"),
        ("paragraph", 0, ""),
        ("heading", 2, "Sub"),
        ("code", 0, ""),
        ("table", 0, ""),
        ("heading", 2, "Setext"),
        ("list", 0, ""),
    ]
    code = doc.blocks[3]
    assert text[code.start : code.end] == "```python\nx = 1\n\ny = 2\n```"  # the blank line stays inside
    assert doc.span(code.start, code.end).line_start == 7
    assert doc.title == "Top"


def test_markdown_unterminated_fence_and_link_definitions_keep_all_text() -> None:
    text = "# T\n\n[ref]: https://example.com\n\n```\nnever closed\n# not a heading\n"
    doc = parse_markdown(text)
    covered = "".join(text[b.start : b.end] for b in doc.blocks)
    assert "".join(covered.split()) == "".join(text.split())
    assert [b.kind for b in doc.blocks if b.kind is BlockKind.HEADING] == [BlockKind.HEADING]


def test_rst_heading_levels_follow_first_appearance_and_overlines() -> None:
    text = "=====\nTitle\n=====\n\nIntro.\n\nSection\n-------\n\nText.\n\nSub\n~~~\n\n.. code-block:: python\n\n   a = 1\n\n   b = 2\n\nOther\n-----\n\n::\n\n    literal\n"
    doc = parse_rst(text)
    headings = [(b.level, b.title) for b in doc.blocks if b.kind is BlockKind.HEADING]
    assert headings == [(1, "Title"), (2, "Section"), (3, "Sub"), (2, "Other")]
    code = [text[b.start : b.end] for b in doc.blocks if b.kind is BlockKind.CODE]
    assert code[0] == ".. code-block:: python\n\n   a = 1\n\n   b = 2"  # directive body kept whole
    assert doc.title == "Title"


def test_rst_tables_and_transitions() -> None:
    text = "T\n=\n\n=====  =====\na      b\n=====  =====\n\n----------\n\nafter\n"
    doc = parse_rst(text)
    assert [b.kind for b in doc.blocks] == [
        BlockKind.HEADING,
        BlockKind.TABLE,
        BlockKind.PARAGRAPH,
        BlockKind.PARAGRAPH,
    ]


def test_html_drops_scripts_and_maps_lines_back_to_source() -> None:
    source = (
        "<html><head><title>Doc &amp; Title</title>\n<script>var secret = 1;</script></head>\n<body>\n"
        "<h1>Main</h1>\n<p>First <b>para</b>\ncontinues</p>\n<pre>code\n  indented</pre>\n"
        "<table><tr><td>a</td><td>b</td></tr></table>\n<h2>Second</h2><p>Unclosed <i>tag\n</body></html>"
    )
    doc = parse_html(source)
    assert "secret" not in doc.text
    assert doc.title == "Doc & Title"
    assert kinds(doc)[0] == ("heading", 1, "Main")
    pre = next(b for b in doc.blocks if b.kind is BlockKind.CODE)
    assert doc.text[pre.start : pre.end] == "code\n  indented"  # whitespace in <pre> is kept
    table = next(b for b in doc.blocks if b.kind is BlockKind.TABLE)
    assert doc.text[table.start : table.end] == "a | b"
    assert doc.span(pre.start, pre.end).line_start == 7 and doc.span(pre.start, pre.end).line_end == 8
    last = doc.blocks[-1]
    assert doc.text[last.start : last.end] == "Unclosed tag" and doc.line_of(last.start) == 10


def test_html_meta_tags_become_metadata() -> None:
    doc = parse_html('<head><meta name="kb:product" content="billing"></head><p>x</p>')
    assert doc.metadata == {"product": "billing"}
