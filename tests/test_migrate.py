"""``kb migrate``: an embedded index copied into a server collection (qdrant-client local mode stands in for
the server: see ``BACKENDS`` in conftest) answers exactly like the original, keeps its manifest (a reindex
after the move writes nothing), and is verified; a non-empty target is refused unless --replace."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb import ConfigError, KnowledgeBase
from kb.cli import app
from kb.migrate import migrate
from kb.samples import sample_kb_path

QUERIES = ["What does error E4012 mean?", "billing.retry_limit", "how do I roll back a deployment", "--dry-run"]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("migrate") / "handbook"
    with KnowledgeBase.open(folder) as kb:
        kb.ingest(sample_kb_path())
    return folder


def test_migrated_index_answers_like_the_original_and_keeps_its_manifest(embedded: Path, tmp_path: Path) -> None:
    server_dir = tmp_path / "replica"
    report = migrate(embedded, f"local:{server_dir / 'qdrant-local'}")
    assert report.verified and report.collection == "handbook" and report.documents == 26
    with KnowledgeBase.open(embedded) as original:
        expected = {q: [(h.node_id, round(h.score, 4)) for h in original.search(q, k=5)] for q in QUERIES}
        chunks = original.store.count()
    with KnowledgeBase.open(server_dir, qdrant_url="local", qdrant_collection="handbook") as replica:
        assert replica.store.describe()["backend"] == "qdrant-server"
        assert replica.store.count() == chunks == report.points
        for query, hits in expected.items():
            assert [(h.node_id, round(h.score, 4)) for h in replica.search(query, k=5)] == hits, query
        assert len(replica.manifest.documents) == 26
        assert replica.reindex(sample_kb_path()).chunks_written == 0  # nothing re-embedded after the move


def test_non_empty_target_is_refused_unless_replace(embedded: Path, tmp_path: Path) -> None:
    target = f"local:{tmp_path / 'q'}"
    migrate(embedded, target, collection="docs")
    with pytest.raises(ConfigError, match="--replace"):
        migrate(embedded, target, collection="docs")
    again = migrate(embedded, target, collection="docs", replace=True)
    assert again.verified


def test_cli_migrate_reports_and_bad_targets_are_clear_errors(embedded: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["migrate", "--from", str(embedded), "--to", f"local:{tmp_path / 'q'}"])
    assert ok.exit_code == 0, ok.output
    assert "verified" in ok.output and "qdrant_collection" in ok.output
    bad = runner.invoke(app, ["migrate", "--from", str(embedded), "--to", "qdrant:6333"])
    assert bad.exit_code == 2 and "http(s)://" in bad.output
    down = runner.invoke(app, ["migrate", "--from", str(embedded), "--to", "http://127.0.0.1:9"])
    assert down.exit_code == 2 and "cannot reach the Qdrant server at http://127.0.0.1:9" in down.output
    missing = runner.invoke(app, ["migrate", "--from", str(tmp_path / "nothing"), "--to", "http://127.0.0.1:9"])
    assert missing.exit_code == 2 and "not" in missing.output


def test_the_settings_migrate_prints_open_the_copy(embedded: Path, tmp_path: Path) -> None:
    """It printed ``qdrant_url = "local:PATH"``, which the settings refuse; local mode takes ``"local"`` and reads
    the index folder's qdrant-local/."""
    runner = CliRunner()
    replica = tmp_path / "replica"
    done = runner.invoke(app, ["migrate", "--from", str(embedded), "--to", f"local:{replica / 'qdrant-local'}"])
    advice = " ".join(done.output.split())
    assert f'set qdrant_url = "local" and qdrant_collection = "handbook" in {replica}/kb.toml' in advice, advice
    (replica / "kb.toml").write_text('qdrant_url = "local"\nqdrant_collection = "handbook"\n')
    found = runner.invoke(app, ["search", "What does error E4012 mean?", "--kb", str(replica), "--json"])
    assert found.exit_code == 0 and "retries.md" in found.output, found.output
    elsewhere = runner.invoke(app, ["migrate", "--from", str(embedded), "--to", f"local:{tmp_path / 'q'}"])
    assert "move" in elsewhere.output and "qdrant-local" in elsewhere.output, elsewhere.output
