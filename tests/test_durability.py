"""Durable write order (issue 18, item 5): the DIRTY journal and state files are fsynced with their folder,
a batch's points are flushed before the manifest names them, and a power cut at *every* write point of a
reindex (tests/powercut.py: unflushed store writes are lost) leaves an index that opens, holds each document
in its old or its new version, and is completed by the next reindex — on both store backends."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

import kb.indexing.indexer as indexer_module
from kb import KnowledgeBase
from kb.manifest import FolderState
from tests.conftest import BACKENDS, FULL_PROFILE, write
from tests.powercut import PowerCut, PowerLoss

SMALL = dict(chunk_max_tokens=64, chunk_min_tokens=8, llm_backend="extractive")


def page(name: str, version: int) -> str:
    return f"# Page {name}\n\nThe zq{name}v{version} token marks version {version} of page {name}.\n"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_state_files_are_durable_before_they_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_state/delete_state fsync the file and then its folder (the rename or unlink itself)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    state = FolderState(tmp_path)
    state.write_state("DIRTY", {"since": 1})
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".DIRTY.")) and synced[1] == str(tmp_path)
    synced.clear()
    state.delete_state("DIRTY")
    assert synced == [str(tmp_path)] and not (tmp_path / "DIRTY").exists()


def test_every_write_follows_the_journal_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = tmp_path / "docs"
    for name in "abcdef":
        write(docs, f"{name}.md", page(name, 1))
    monkeypatch.setattr(indexer_module, "EMBED_FLUSH_CHUNKS", 2)  # several batches
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        for name in "abc":
            write(docs, f"{name}.md", page(name, 2))
        cut = PowerCut(kb, at=None, volatile_store=True)
        kb.reindex(docs)
        trace = cut.points
    assert trace[0] == "store.write_state"  # the DIRTY journal entry before anything else
    cleared = max(i for i, point in enumerate(trace) if point == "store.delete_state")
    assert trace[cleared - 1] == "store.flush"  # cleared only once everything is flushed
    writes = {"store.upsert", "store.delete_version", "store.delete_documents", "store.set_acl", "manifest.commit"}
    assert not writes & set(trace[cleared:]), trace[cleared:]  # (then only sources.json: the run's status)
    for i, point in enumerate(trace):
        if point == "manifest.commit":  # what a commit names was written and flushed just before
            assert trace[i - 1] == "store.flush" and trace[i - 2] == "store.upsert", trace
        if point == "store.delete_version":  # old versions go only after the commit that replaced them
            assert "manifest.commit" in trace[:i]
    assert trace.count("store.upsert") >= 2


def scenario(root: Path) -> tuple[Path, Path]:
    """An index of six pages, and the folder changed: two edited, two added, one deleted, one ACL rule."""
    docs, index = root / "docs", root / "idx"
    for name in "abcdef":
        write(docs, f"{name}.md", page(name, 1))
    return docs, index


def change(docs: Path) -> None:
    write(docs, "a.md", page("a", 2))
    write(docs, "b.md", page("b", 2))
    write(docs, "g.md", page("g", 1))
    write(docs, "h.md", page("h", 1))
    (docs / "f.md").unlink()
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "e.md"\ngroups = ["ops"]\n')


def check_consistent(kb: KnowledgeBase) -> None:
    """The store holds exactly the versions the manifest names, complete, and no journal is left."""
    expected = {(d, e.doc_hash): e.chunks for d, e in kb.manifest.documents.items() if e.chunks}
    assert kb.store.versions() == expected
    assert kb.store.read_state("DIRTY") is None


@pytest.fixture(scope="module")
def base_index(tmp_path_factory: pytest.TempPathFactory):
    built = {}
    for name, backend in BACKENDS.items():
        root = tmp_path_factory.mktemp(f"powercut-{name}")
        docs, index = scenario(root)
        with KnowledgeBase.open(index, **SMALL, **backend) as kb:
            kb.reindex(docs)
        built[name] = (root, docs, index)
    return built


def run_cut(base: tuple[Path, Path, Path], tmp: Path, backend: dict, at: int | None) -> list[str]:
    """Copy the base index, change the folder, reindex with a cut at write point ``at``, reopen, check."""
    _, docs0, index0 = base
    docs, index = tmp / "docs", tmp / "idx"
    shutil.copytree(docs0, docs)
    shutil.copytree(index0, index)
    old = {f"docs:{p.name}": sha(p.read_text()) for p in docs.glob("*.md")}
    with KnowledgeBase.open(index, **SMALL, **backend) as kb:
        kb.update_source("docs", path=docs)
    change(docs)
    new = {f"docs:{p.name}": sha(p.read_text()) for p in docs.glob("*.md")}
    kb = KnowledgeBase.open(index, **SMALL, **backend)
    cut = PowerCut(kb, at, volatile_store=not backend)
    try:
        kb.reindex(docs)
    except PowerLoss:
        pass
    finally:
        cut.unplug()
    with KnowledgeBase.open(index, **SMALL, **backend) as kb:  # opens: the sweep ran
        check_consistent(kb)
        for doc_id, entry in kb.manifest.documents.items():
            assert entry.doc_hash in {old.get(doc_id), new.get(doc_id)} - {None}, doc_id
        for doc_id in set(old) & set(new):  # nothing that was indexed and is still there was lost
            assert doc_id in kb.manifest.documents, doc_id
        kb.reindex(docs)
        check_consistent(kb)
        assert {d: e.doc_hash for d, e in kb.manifest.documents.items()} == new
        assert kb.manifest.documents["docs:e.md"].acl == ["ops"]
    return cut.points


@pytest.mark.parametrize("backend_name", list(BACKENDS))
def test_power_cut_at_every_write_point(
    base_index, backend_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexer_module, "EMBED_FLUSH_CHUNKS", 2)  # several batches: more interleavings
    backend = BACKENDS[backend_name]
    points = run_cut(base_index[backend_name], tmp_path / "full", backend, at=None)
    assert len(points) >= 12, points
    every = range(1, len(points) + 1)
    # The full profile (CI) cuts at every write point; `make test` at every third, the last one included.
    chosen = list(every) if FULL_PROFILE else sorted({*list(every)[::3], len(points)})
    for at in chosen:
        run_cut(base_index[backend_name], tmp_path / f"cut-{at}", backend, at)
