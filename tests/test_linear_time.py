"""Hostile text takes time in proportion to its length: each case once took quadratic time somewhere between a
document, a question or a model's answer and what kb makes of it.

Each case runs in a child process killed after ``LIMIT_S``. The inputs are sized so that the quadratic code took
minutes (the figure in each case, measured on a 2-core machine) and the linear code takes well under a second:
a regression fails by timing out, with a margin no loaded machine erases.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

LIMIT_S = 30

CASES = {
    # A model's answer with its citations parsed: 40,000 spaces took 18 s, 100,000 several minutes.
    "answer with a long run of blanks, citations parsed": """
from kb.citations import parse_citations
for blank in (" ", "\\t"):
    raw = "Restart it" + blank * 100_000 + "then check it [1]. See: ```bash\\nls [1]\\n```"
    text, used, _ = parse_citations(raw, n_sources=1)
    assert used == [1] and text.endswith("```bash\\nls\\n```\\n[1]"), text[-40:]
""",
    # An answer cut off at the token limit inside a fence's language name: 3 s at 24,000 blanks.
    "answer cut off after a fence and a long run of blanks": """
from kb.citations import parse_citations
text, used, _ = parse_citations("Run: ```" + " " * 200_000 + "!", n_sources=1)
assert used == [] and text.startswith("Run: ```"), text[:20]
""",
    # Markers out of range are removed and the gaps closed: 8,000 of them took 0.9 s (with no punctuation after).
    "answer with a long run of out-of-range markers": """
from kb.citations import parse_citations
text, used, _ = parse_citations("Restart it" + "[9]" * 100_000, n_sources=1)
assert (text, used) == ("Restart it", []), text[:40]
""",
    # A model's answer (grounding checks each sentence; llm_max_tokens bounds it, and one token can be a long
    # run of blanks): 2.9 s at 20,000 characters, about 5 min here.
    "answer with a long run of spaces, grounded": """
from kb.grounding import support
from kb.citations import Source
from kb.document import Span
source = Source(1, "n", "d", "T", "H", Span(0, 1, 1, 1), "", "claim one here b", 1.0, 1.0)
checks = support("Claim one here" + " " * 200_000 + "b [1].", [source])
assert [c.cited for c in checks] == [(1,)], checks
""",
    "answer with a long run of blank lines, grounded": """
from kb.grounding import sentences
out = sentences("Claim one here [1]." + "\\n" * 200_000 + "b two three [1].")
assert [s for s, _ in out] == ["Claim one here.", "b two three."], out
""",
    # drop_limits reads each sentence's start for "However, the sources …": 5 s at 20,000 characters.
    "answer sentence opening with a long run of spaces": """
from kb.grounding import drop_limits
text, dropped = drop_limits("However," + " " * 200_000 + "the sources do not say.", lambda s: True)
assert dropped and not text.strip(), (text[:40], dropped)
""",
    # Extractive answers split a chunk into sentences, dropping heading and rule lines.
    "chunk line of blanks, extractive sentences": """
from kb.answering import _sentences
assert _sentences(" " * 200_000 + "x is a sentence here.") == ["x is a sentence here."]
""",
    # A document title with many "<source" and no ">" is fenced into every prompt that cites it: 2.5 s at 30,000.
    "title of repeated tag openings, fenced for the prompt": """
from kb.prompting import fence
title = "<source " * 250_000
assert fence(title) == title and fence(title + ">").startswith("‹source")
""",
    # Documents: reStructuredText "::" before blank lines and an indent that is not a space or tab.
    "rst literal marker before many blank lines": """
from kb.parsers.rst import parse_rst
doc = parse_rst("Para::\\n" + "\\n" * 200_000 + "\\u3000x\\n")
assert doc.blocks
""",
    "asciidoc heading with a long run of spaces": """
from kb.parsers.asciidoc import parse_asciidoc
doc = parse_asciidoc("= a" + " " * 200_000 + "b\\n\\nBody.\\n")
assert doc.blocks[0].kind == "heading" and doc.blocks[0].title.split() == ["a", "b"], doc.blocks[0].title[:20]
""",
    "asciidoc anchor that never closes": """
from kb.parsers.asciidoc import parse_asciidoc
assert parse_asciidoc("[#" + "a" * 800_000 + "\\n\\nBody.\\n").blocks
""",
    # A streamed answer is guarded against repeating the instructions token by token: re-reading the whole answer
    # per token took 15 s of CPU at 8,192 tokens (the largest llm_max_tokens), minutes at 30,000.
    "streamed answer of 30,000 tokens, guarded against leaking the instructions": """
from kb.answering import LeakGuard
from kb.prompting import SYSTEM_PROMPT
deltas = [f" word{i % 7}" for i in range(30_000)]
guard = LeakGuard()
shown = "".join(guard.feed(d) for d in deltas) + guard.finish()
assert shown == "".join(deltas) and not guard.leaked
guard = LeakGuard()
for d in deltas + SYSTEM_PROMPT.split("Rules:")[1][:300].split(" "):
    guard.feed(d + " ")
assert guard.leaked
""",
    # The web page's document view renders every chunk of a page: 52 ms per 4,000-character chunk before.
    "markdown heading with a long run of spaces, document view": """
from kb.web.view import readable_blocks
from kb.records import ChunkRecord
from kb.document import Span
text = "# a" + " " * 200_000 + "b"
blocks = readable_blocks(ChunkRecord(text=text, doc_id="d", span=Span(0, len(text), 1, 1)))
assert blocks[0].text.split() == ["a", "b"], blocks[0]
""",
    "markdown heading with a long run of spaces, a foreign node's header path": """
from kb.records import _header_path_of
assert _header_path_of("/A/", "# a" + " " * 200_000 + "b")[-1].split() == ["a", "b"]
""",
    # A PDF with many bookmarks on one long page: every bookmark scanned the page (1.5 s at 800).
    "pdf with 6,000 bookmarks on one page": """
from fpdf import FPDF
from kb.parsers.pdf import parse_pdf
n = 6000
pdf = FPDF(format=(600, 30 + n * 2.2))
pdf.set_auto_page_break(False)
pdf.add_page()
pdf.set_font("helvetica", size=5)
for i in range(n):
    pdf.start_section(f"Missing title {i}", level=0)
for i in range(n):
    pdf.cell(500, 2.2, f"Body line number {i} of text", new_x="LMARGIN", new_y="NEXT")
doc = parse_pdf(bytes(pdf.output()))
assert sum(b.kind == "heading" for b in doc.blocks) == n
""",
}


@pytest.mark.parametrize("script", list(CASES.values()), ids=list(CASES))
def test_hostile_text_is_read_in_linear_time(script: str) -> None:
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {LIMIT_S} s: super-linear again")
    assert done.returncode == 0, done.stderr[-2000:]
