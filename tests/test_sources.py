"""Many sources in one index (issue 13): colliding paths in two folders both stay searchable, a reindex of one
source leaves the other byte-identical (both store backends), ``kb source`` commands, ``[[sources]]`` in
kb.toml, per-source settings applied without re-embedding, folders that move, indexes of older kb versions
adopted into sources with their vectors, and ``POST /reindex {"source": ...}``."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kb import ConfigError, KnowledgeBase, Principal
from kb.acl import PUBLIC
from kb.cli import app
from kb.indexing import text_hash
from kb.manifest import point_id
from kb.records import ChunkRecord
from kb.store.base import StoredPoint
from tests.conftest import write
from tests.test_api import ADMIN, KEYS, auth, served_app

SMALL = dict(chunk_max_tokens=64, chunk_min_tokens=8, llm_backend="extractive")
runner = CliRunner()


def two_folders(root: Path) -> tuple[Path, Path]:
    a, b = root / "team-a", root / "team-b"
    write(a, "README.md", "# Team A\n\nTeam A deploys with zqalpha pipelines.\n")
    write(a, "ops/runbook.md", "# Runbook A\n\nRestart zqalpharunbook workers.\n")
    write(b, "README.md", "# Team B\n\nTeam B deploys with zqbeta pipelines.\n")
    write(b, "ops/runbook.md", "# Runbook B\n\nRestart zqbetarunbook workers.\n")
    return a, b


def source_points(kb: KnowledgeBase, source: str) -> dict[str, tuple]:
    """Every point of ``source``: id → (payload, dense vector, sparse vector), exactly as stored."""
    points = {}
    for point in kb.store.scroll_points():
        if point.payload.get("source") == source:
            points[point.id] = (json.dumps(point.payload, sort_keys=True), point.dense, point.sparse)
    return points


def test_two_folders_with_the_same_file_names_never_overwrite_each_other(tmp_path: Path, backend: dict) -> None:
    a, b = two_folders(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL, **backend) as kb:
        kb.ingest(a)
        kb.ingest(b)  # the old ids were "README.md" for both: b replaced a
        assert {h.doc_id for h in kb.search("zqalpha", k=5, mode="bm25")} == {"team-a:README.md"}
        assert {h.doc_id for h in kb.search("zqbeta", k=5, mode="bm25")} == {"team-b:README.md"}
        before = source_points(kb, "team-b")
        manifest_before = kb.manifest.of_source("team-b")
        write(a, "ops/runbook.md", "# Runbook A\n\nRestart zqalpharunbook workers, then page on-call.\n")
        (a / "README.md").unlink()
        report = kb.reindex(a)  # the old code deleted every document that came from b here
        assert report.deleted == ["team-a:README.md"] and report.changed == ["team-a:ops/runbook.md"]
        assert source_points(kb, "team-b") == before  # byte-identical: payloads and both vectors
        assert kb.manifest.of_source("team-b") == manifest_before
        assert kb.search("zqbetarunbook", k=1, mode="bm25")[0].doc_id == "team-b:ops/runbook.md"


def test_source_commands_end_to_end(tmp_path: Path) -> None:
    a, b = two_folders(tmp_path)
    index = str(tmp_path / "idx")
    ok = [
        ["source", "add", "runbooks", str(a), "--url", "https://git.example.com/a/blob/main/{path}"],
        ["source", "add", "handbook", str(b), "--acl", "staff", "--meta", "team=b"],
    ]
    for command in ok:
        result = runner.invoke(app, [*command, "--kb", index])
        assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["source", "add", "runbooks", str(b), "--kb", index]).exit_code == 2  # name taken
    result = runner.invoke(app, ["reindex", "runbooks", "--kb", index])
    assert result.exit_code == 0, result.output
    listed = json.loads(runner.invoke(app, ["source", "list", "--kb", index, "--json"]).stdout)
    rows = {row["name"]: row for row in listed}
    assert (rows["runbooks"]["documents"], rows["handbook"]["documents"]) == (2, 0)  # only that source
    assert rows["runbooks"]["last_reindex"] > 0 and rows["handbook"]["last_reindex"] == 0
    result = runner.invoke(app, ["reindex", "--all", "--kb", index, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["sources"] == ["runbooks", "handbook"]
    table = runner.invoke(app, ["source", "list", "--kb", index], env={"COLUMNS": "250"}).output
    assert "runbooks" in table and "handbook" in table and str(b) in table
    with KnowledgeBase.open(index, **SMALL) as kb:
        hit = kb.search("zqalpha", k=1, mode="bm25")[0]
        assert hit.url == "https://git.example.com/a/blob/main/README.md"
        assert kb.search("zqbeta", k=1, mode="bm25", user=Principal(groups=["eng"])) == []  # handbook: staff
        staff = kb.search("zqbeta", k=1, mode="bm25", user=Principal(groups=["staff"]))[0]
        assert staff.doc_id == "handbook:README.md" and staff.metadata["team"] == "b"
    result = runner.invoke(app, ["source", "remove", "runbooks", "--kb", index])
    assert result.exit_code == 0 and "2 documents" in result.output
    with KnowledgeBase.open(index, **SMALL) as kb:
        assert set(kb.manifest.documents) == {"handbook:README.md", "handbook:ops/runbook.md"}
        assert kb.search("zqalpha", k=5, mode="bm25") == [] and set(kb.sources) == {"handbook"}


def test_sources_declared_in_kb_toml_with_relative_paths(tmp_path: Path) -> None:
    a, _ = two_folders(tmp_path)
    index = tmp_path / "idx"
    index.mkdir()
    (index / "kb.toml").write_text(
        "chunk_max_tokens = 64\nchunk_min_tokens = 8\n"
        '[[sources]]\nname = "a"\npath = "../team-a"\ninclude = ["README.md"]\n'
        '[[sources]]\nname = "b"\npath = "../team-b"\nacl = ["ops"]\nmetadata = {product = "beta"}\n'
    )
    with KnowledgeBase.open(index) as kb:
        assert kb.sources["a"].path == str(a.resolve()) and kb.sources["a"].origin == "kb.toml"
        report = kb.reindex()
        assert sorted(report.added) == ["a:README.md", "b:README.md", "b:ops/runbook.md"]
        assert kb.manifest.documents["b:README.md"].acl == ["ops"]
        assert kb.search("zqbeta", k=1, mode="bm25", filters={"product": "beta"})[0].doc_id == "b:README.md"
        with pytest.raises(ConfigError, match=r"declared in .*kb\.toml"):
            kb.remove_source("a")
    (index / "kb.toml").write_text('[[sources]]\nname = "a"\npath = "../nope"\nacl = "*"\n')
    result = runner.invoke(app, ["status", "--kb", str(index)])
    assert result.exit_code == 2 and "sources.0.acl" in result.output and "kb.toml" in result.output
    assert "'*' is for principals" in result.output


def test_per_source_settings_apply_without_re_embedding(tmp_path: Path) -> None:
    a, _ = two_folders(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.add_source("a", a)
        kb.reindex(source="a")
        kb.update_source("a", url="https://docs.example.com/{stem}#{anchor}", metadata={"team": "a"})
        report = kb.reindex(source="a")
        assert sorted(report.refreshed) == ["a:README.md", "a:ops/runbook.md"] and report.changed == []
        assert report.chunks_written == report.chunks_reused == 2  # payloads rewritten, vectors kept
        hit = kb.search("zqalpharunbook", k=1, mode="bm25", filters={"team": "a"})[0]
        assert hit.url == "https://docs.example.com/ops/runbook#runbook-a"
        kb.update_source("a", acl=["sre"])
        acl = kb.reindex(source="a")
        assert sorted(acl.acl_changed) == ["a:README.md", "a:ops/runbook.md"] and acl.chunks_written == 0
        assert kb.reindex(source="a").summary() == "0 added, 0 changed, 0 deleted, 2 unchanged"


def test_a_moved_folder_re_embeds_nothing(tmp_path: Path) -> None:
    a, _ = two_folders(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(a)
        moved = tmp_path / "checkout-2" / "team-a"  # a CI job's next checkout: the old one is gone
        moved.parent.mkdir()
        a.rename(moved)
        report = kb.reindex(moved)
        assert report.summary() == "0 added, 0 changed, 0 deleted, 2 unchanged" and report.chunks_written == 0
        assert kb.sources["team-a"].path == str(moved) and set(kb.sources) == {"team-a"}
        renamed = kb.rename_source("team-a", "alpha")
        assert sorted(renamed.adopted) == ["alpha:README.md", "alpha:ops/runbook.md"]
        assert renamed.chunks_reused == renamed.chunks_written == 2  # new ids, the same vectors
        assert set(kb.manifest.documents) == {"alpha:README.md", "alpha:ops/runbook.md"}
        assert kb.search("zqalpha", k=1, mode="bm25")[0].doc_id == "alpha:README.md"


def test_an_index_of_an_older_kb_opens_and_is_adopted_without_re_embedding(tmp_path: Path, backend: dict) -> None:
    """Points and manifest as kb 0.1 wrote them (bare ids, no source/path in the payload, manifest.json)."""
    docs = tmp_path / "docs"
    write(docs, "keys.md", "# Keys\n\nRotate keys with zqlegacy roll.\n")
    write(docs, "gone.md", "# Gone\n\nA page whose file was removed since: zqgone.\n")
    index = tmp_path / "idx"
    with KnowledgeBase.open(index, **SMALL, **backend) as kb:
        points, entries = [], {}
        for name in ("keys.md", "gone.md"):
            text = (docs / name).read_text()
            doc_hash = hashlib.sha256(text.encode()).hexdigest()
            title = text.split("\n")[0][2:]
            embed_text = f"{title}\n{text.strip()}"
            payload = {"text": text.strip(), "doc_id": name, "doc_hash": doc_hash, "chunk_index": 0, "title": title,
                       "header_path": [title], "span": [0, len(text.strip()), 1, 3], "source_format": "markdown",
                       "url": "", "meta": {}, "text_hash": text_hash(embed_text),
                       "acl": [PUBLIC]}  # fmt: skip
            sparse = kb.store.bm25_document(ChunkRecord.from_payload(payload))
            points.append(StoredPoint(point_id(name, doc_hash, 0), kb.embedder.embed([embed_text])[0], sparse, payload))
            entries[name] = {"doc_hash": doc_hash, "chunks": 1, "mtime": 1.0, "size": len(text), "source_format":
                             "markdown", "title": title, "acl": [PUBLIC], "own_acl": None}  # fmt: skip
        kb.store.upsert(points)
        kb.store.flush()
        kb.manifest.close()
    if backend:  # kb 0.1 kept a server index's manifest as one state point
        with KnowledgeBase.open(index, **SMALL, **backend) as kb:
            kb.store.write_state("manifest.json", {"documents": entries, "updated_at": 1.0})
    else:
        (index / "manifest.sqlite").unlink()
        (index / "manifest.json").write_text(json.dumps({"documents": entries, "updated_at": 1.0}))
    with KnowledgeBase.open(index, **SMALL, **backend) as kb:
        assert set(kb.manifest.documents) == {"keys.md", "gone.md"}  # read, validated, imported
        assert kb.search("zqlegacy", k=1, mode="bm25")[0].doc_id == "keys.md"
        assert kb.status().legacy_documents == 2
        (docs / "gone.md").unlink()
        report = kb.reindex(docs)
        assert report.adopted == ["docs:keys.md"] and report.chunks_written == report.chunks_reused == 1
        assert report.deleted == []  # the legacy document with no file is not this source's: kept, listed
        assert set(kb.manifest.documents) == {"docs:keys.md", "gone.md"}
        assert kb.search("zqlegacy", k=1, mode="bm25")[0].doc_id == "docs:keys.md"
        assert kb.status().legacy_documents == 1


def test_http_reindex_of_one_source(tmp_path: Path) -> None:
    a, b = two_folders(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL, api_keys=KEYS) as kb:
        kb.add_source("a", a)
        kb.add_source("b", b)
        with served_app(kb) as base, httpx.Client(base_url=base, timeout=60) as client:
            started = client.post("/reindex", headers=auth(ADMIN), json={"source": "b"}).json()
            while started["state"] == "running":
                time.sleep(0.1)
                started = client.get(f"/reindex/{started['id']}", headers=auth(ADMIN)).json()
            assert started["state"] == "done" and started["report"]["sources"] == ["b"]
            unknown = client.post("/reindex", headers=auth(ADMIN), json={"source": "nope"})
            assert unknown.status_code == 404 and unknown.json()["fields"][0]["field"] == "source"
        assert {e.source for e in kb.manifest.documents.values()} == {"b"}


def test_source_names_and_folders_are_validated(tmp_path: Path) -> None:
    a, _ = two_folders(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        for bad in ("a:b", "", "x" * 80, "../up"):
            with pytest.raises(ConfigError, match="source name"):
                kb.add_source(bad, a)
        with pytest.raises(ConfigError, match="not a folder"):
            kb.add_source("missing", tmp_path / "missing")
        kb.add_source("a", a)
        with pytest.raises(ConfigError, match="already source 'a'"):
            kb.add_source("again", a)
        with pytest.raises(ConfigError, match="url template"):
            kb.update_source("a", url="https://x/{nope}")
        assert uuid.UUID(point_id("a:README.md", "h", 0))  # ids stay UUIDs whatever the name
