"""Loading: discovery, decoding, metadata, and files that must be skipped with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kb import KnowledgeBase
from kb.errors import SourceError
from kb.loading import Selection, SourceFormat, decode, discover, load_file, load_folder
from kb.settings import Settings
from tests.conftest import write


def test_doc_ids_are_paths_relative_to_root_and_formats_detected(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "# A\n\ntext\n")
    write(tmp_path, "sub/b.rst", "B\n=\n\ntext\n")
    write(tmp_path, "sub/deeper/c.html", "<h1>C</h1><p>text</p>")
    write(tmp_path, "notes.txt", "plain\n")
    write(tmp_path, "objects.rst.txt", "R\n=\n\nx\n")
    write(tmp_path, "image.png", b"\x89PNG")
    docs, skipped = load_folder(tmp_path, Settings())
    assert {d.doc_id: d.source_format for d in docs} == {
        "a.md": SourceFormat.MARKDOWN,
        "notes.txt": SourceFormat.TEXT,
        "objects.rst.txt": SourceFormat.RST,
        "sub/b.rst": SourceFormat.RST,
        "sub/deeper/c.html": SourceFormat.HTML,
    }
    assert skipped == []  # a .png is not selected at all, not "skipped"


def test_front_matter_title_and_hash(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "guide.md",
        "---\ntitle: The Guide\nproduct: billing\ntags: [a, b]\ndate: 2024-01-02\n---\n# Heading\n\nBody\n",
    )
    doc = load_file(path, "guide.md", Settings())
    assert doc.title == "The Guide"
    assert doc.metadata == {"title": "The Guide", "product": "billing", "tags": ["a", "b"], "date": "2024-01-02"}
    assert len(doc.content_hash) == 64
    assert doc.parsed.text[doc.parsed.body_start :].startswith("# Heading")
    # Same bytes, same hash; one byte more, another hash.
    other = write(tmp_path, "copy.md", path.read_text())
    assert load_file(other, "copy.md", Settings()).content_hash == doc.content_hash
    other.write_text(path.read_text() + "!")
    assert load_file(other, "copy.md", Settings()).content_hash != doc.content_hash


def test_title_falls_back_to_first_heading_then_file_name(tmp_path: Path) -> None:
    assert load_file(write(tmp_path, "x.md", "intro\n\n## Sub\n\n# Top\n"), "x.md", Settings()).title == "Top"
    assert load_file(write(tmp_path, "y.md", "no headings\n"), "y.md", Settings()).title == "y.md"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x01\x02binary\x00", "binary"),
        (b"caf\xe9 au lait", "not valid UTF-8 (byte 0xe9 at offset 3)"),
    ],
)
def test_undecodable_files_are_skipped_with_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    write(tmp_path, "good.md", "# Good\n")
    write(tmp_path, "bad.md", data)
    docs, skipped = load_folder(tmp_path, Settings())
    assert [d.doc_id for d in docs] == ["good.md"]
    assert len(skipped) == 1 and skipped[0].doc_id == "bad.md" and reason in skipped[0].reason


def test_utf16_and_bom_and_crlf_are_decoded() -> None:
    assert decode("# Título\r\nline\r".encode("utf-16")) == "# Título\nline\n"
    assert decode(b"\xef\xbb\xbfhello\r\n") == "hello\n"
    with pytest.raises(SourceError):
        decode(b"\xff\xfe\x00\xd8")  # BOM, then a lone surrogate


def test_size_limit_skips_with_the_setting_named(tmp_path: Path) -> None:
    write(tmp_path, "big.md", "x" * 2000)
    _, skipped = load_folder(tmp_path, Settings(max_file_bytes=1000))
    assert "max_file_bytes=1,000" in skipped[0].reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file regardless of permissions")
def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.md", "# x\n")
    path.chmod(0)
    _, skipped = load_folder(tmp_path, Settings())
    assert "cannot read" in skipped[0].reason


def test_symlinks_do_not_leave_the_root_or_loop(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    write(outside, "private.md", "# outside\n")
    write(root, "inside/doc.md", "# inside\n")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "inside" / "loop").symlink_to(root, target_is_directory=True)
    (root / "escape-file.md").symlink_to(outside / "private.md")
    found = [f.relative for f in discover(root, Selection.from_settings(Settings()))]
    # The looping and escaping folders are not walked; the escaping one is reported (as its documents are kept).
    assert found == ["escape-file.md", "escape/", "inside/doc.md"]
    docs, skipped = load_folder(root, Settings())
    # A file or folder link pointing out of the root is reported, never read.
    assert [d.doc_id for d in docs] == ["inside/doc.md"]
    assert sorted(s.doc_id for s in skipped) == ["escape-file.md", "escape/"]
    assert all("outside the" in s.reason for s in skipped)


def test_a_symlink_loop_named_like_a_document_is_skipped_not_a_crash(tmp_path: Path) -> None:
    # Path.resolve raises RuntimeError ("Symlink loop") rather than OSError: it aborted the whole plan.
    docs = tmp_path / "docs"
    write(docs, "a.md", "# a\n")
    (docs / "loop.md").symlink_to(docs / "loop.md")
    (docs / "ping.md").symlink_to(docs / "pong.md")
    (docs / "pong.md").symlink_to(docs / "ping.md")
    loaded, skipped = load_folder(docs, Settings())
    assert [d.doc_id for d in loaded] == ["a.md"]
    assert {s.doc_id for s in skipped} == {"loop.md", "ping.md", "pong.md"}
    assert all(s.reason.startswith("cannot read") for s in skipped)
    with KnowledgeBase.open(tmp_path / "idx") as kb:
        plan = kb.reindex(docs, dry_run=True)
        assert plan.added == ["docs:a.md"] and len(plan.skipped) == 3


def test_selection_patterns_may_be_lists(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "# a\n")
    write(tmp_path, "b.rst", "b\n=\n")
    selection = Selection(["*.md"], [".*"])  # type: ignore[arg-type] - lists, as a caller may well pass
    assert [f.relative for f in discover(tmp_path, selection)] == ["a.md"]


def test_include_and_exclude_patterns(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "# a\n")
    write(tmp_path, "b.rst", "b\n=\n")
    write(tmp_path, "node_modules/c.md", "# c\n")
    write(tmp_path, ".hidden/d.md", "# d\n")
    assert [f.relative for f in discover(tmp_path, Selection.from_settings(Settings()))] == ["a.md", "b.rst"]
    assert [f.relative for f in discover(tmp_path, Selection.from_settings(Settings(include=["*.md"])))] == ["a.md"]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a folder"):
        load_folder(tmp_path / "nope", Settings())
