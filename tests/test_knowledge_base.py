"""The KnowledgeBase facade: ingest reports, idempotent re-ingest, updates that replace a document's
chunks, reopen from disk, the embedder-identity check and settings that would corrupt an index."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb import ConfigError, EmbedderMismatchError, IndexLockedError, KnowledgeBase, Settings
from tests.conftest import write


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    write(
        root,
        "keys.md",
        "---\nproduct: api\n---\n# Keys\n\n## Rotation\n\nRotate keys every 90 days with lumen keys roll.\n",
    )
    write(root, "db.rst", "Database\n========\n\nFailover\n--------\n\nUse patronictl failover to promote a replica.\n")
    write(root, "bad.md", b"\x00\x00binary")
    return root


def test_ingest_reports_documents_chunks_skips_and_stage_times(tmp_path: Path, docs: Path) -> None:
    with KnowledgeBase.open(tmp_path / "idx") as kb:
        report = kb.ingest(docs)
        assert sorted(report.added) == ["docs:db.rst", "docs:keys.md"]
        assert [(s.doc_id, "binary" in s.reason) for s in report.skipped] == [("docs:bad.md", True)]
        assert report.chunks_written == kb.store.count() == 2
        assert set(report.timings) == {"plan", "load_model", "parse", "embed", "store"}
        status = kb.status()
        assert (status.documents, status.chunks) == (2, 2)
        assert status.embedder["name"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_reingest_is_a_no_op_and_a_change_replaces_the_old_chunks(tmp_path: Path, docs: Path) -> None:
    with KnowledgeBase.open(tmp_path / "idx") as kb:
        kb.ingest(docs)
        again = kb.ingest(docs)
        assert (again.unchanged, again.chunks_written, again.added) == (2, 0, [])
        (docs / "keys.md").write_text("# Keys\n\n## Rotation\n\nRotate keys every 30 days now.\n")
        changed = kb.ingest(docs)
        assert changed.changed == ["docs:keys.md"]
        texts = [h.text for h in kb.search("how often rotate keys", k=5)]
        assert any("30 days" in t for t in texts) and not any("90 days" in t for t in texts)
        assert kb.store.count() == 2
        assert kb.search("keys", filters={"product": "api"}) == []  # front matter removed with the edit


def test_index_reopens_from_disk_with_the_same_results(tmp_path: Path, docs: Path) -> None:
    with KnowledgeBase.open(tmp_path / "idx") as kb:
        kb.ingest(docs)
        before = [(h.node_id, round(h.score, 5)) for h in kb.search("promote a replica", k=2)]
    with KnowledgeBase.open(tmp_path / "idx") as kb:
        assert [(h.node_id, round(h.score, 5)) for h in kb.search("promote a replica", k=2)] == before
        assert len(kb.manifest.documents) == 2


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with KnowledgeBase.open(tmp_path / "idx"), pytest.raises(IndexLockedError):
        KnowledgeBase.open(tmp_path / "idx")


def test_opening_with_another_embedder_names_the_model_that_built_the_index(
    tmp_path: Path, docs: Path, other_embedder: Path
) -> None:
    with KnowledgeBase.open(tmp_path / "idx") as kb:
        kb.ingest(docs)
    with pytest.raises(EmbedderMismatchError) as error:
        KnowledgeBase.open(tmp_path / "idx", embedder_model=str(other_embedder))
    message = str(error.value)
    assert "built with embedder sentence-transformers/all-MiniLM-L6-v2" in message
    assert str(other_embedder) in message and "embedder_model" in message
    # The other model works for an index of its own.
    with KnowledgeBase.open(tmp_path / "other", embedder_model=str(other_embedder)) as kb:
        kb.ingest(docs)
        assert kb.search("patronictl")[0].doc_id == "docs:db.rst"


def test_changed_chunk_size_refuses_to_mix_chunks(tmp_path: Path, docs: Path) -> None:
    with KnowledgeBase.open(tmp_path / "idx") as kb:
        kb.ingest(docs)
    with KnowledgeBase.open(tmp_path / "idx", chunk_max_tokens=100) as kb, pytest.raises(ConfigError, match="chunk"):
        kb.ingest(docs)


def test_chunk_cap_above_what_the_embedder_reads_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"chunk_max_tokens=400 is more than .* reads \(254 tokens\)"):
        KnowledgeBase.open(tmp_path / "idx", settings=Settings(chunk_max_tokens=400))


def test_kb_toml_next_to_the_index_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "idx"
    index.mkdir()
    (index / "kb.toml").write_text('fusion = "dbsf"\nprefetch_limit = 20\n')
    monkeypatch.setenv("KB_PREFETCH_LIMIT", "30")
    settings = Settings.load(index, rrf_k=10)
    assert (settings.fusion.value, settings.prefetch_limit, settings.rrf_k) == ("dbsf", 30, 10)
    (index / "kb.toml").write_text('fusion = "magic"\n')
    with pytest.raises(ConfigError, match=r"fusion: .*'magic'") as error:
        Settings.load(index)
    assert "kb.toml" in str(error.value)
    (index / "kb.toml").write_text("fusion = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(index)
