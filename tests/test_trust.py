"""No document lost, none leaked (issue 18): one regression test per finding, each reproducing it on real
indexes, real files (permissions enforced even as root, see tests/caps.py), the real HTTP server and CLI."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from llama_index.core import Document
from llama_index.core.node_parser import MarkdownNodeParser
from typer.testing import CliRunner

from kb import ConfigError, IndexDamagedError, IndexLockedError, KnowledgeBase, Principal, Settings
from kb.acl import PUBLIC
from kb.cli import app
from kb.errors import SourceError
from kb.prompting import SYSTEM_PROMPT
from tests.caps import permissions_enforced
from tests.conftest import write
from tests.fake_openai import FakeOpenAI, serve
from tests.test_answering import llm_for
from tests.test_api import ADMIN, HR, KEYS, READ, auth, served_app

SMALL = dict(chunk_max_tokens=64, chunk_min_tokens=8, llm_backend="extractive")
runner = CliRunner()


def small_index(path: Path) -> Path:
    """An index folder whose kb.toml carries SMALL, so the CLI opens it with the same settings."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "kb.toml").write_text('chunk_max_tokens = 64\nchunk_min_tokens = 8\nllm_backend = "extractive"\n')
    return path


def product_docs(root: Path, n: int = 8) -> Path:
    docs = root / "docs"
    for i in range(n):
        write(docs, f"product/p{i}.md", f"# Product {i}\n\nProduct page {i} mentions zqproduct{i} and pricing.\n")
    for i in range(4):
        write(docs, f"ops/o{i}.md", f"# Ops {i}\n\nRunbook {i} for zqops{i} alerts.\n")
    return docs


# -- 1. an unreadable folder is a skip, never an empty folder ------------------------------------------------
def test_unreadable_subfolder_is_skipped_with_a_reason_and_its_documents_stay(tmp_path: Path) -> None:
    docs = product_docs(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        (docs / "product").chmod(0)
        try:
            with permissions_enforced():
                plan = kb.reindex(docs, dry_run=True)
                report = kb.reindex(docs)
        finally:
            (docs / "product").chmod(0o755)
        assert plan.deleted == [] and report.deleted == []
        assert [(s.doc_id, "cannot be listed" in s.reason) for s in report.skipped] == [("docs:product/", True)]
        assert len(kb.manifest.documents) == 12
        assert kb.search("zqproduct3", k=1, mode="bm25")[0].doc_id == "docs:product/p3.md"


def test_unlistable_root_is_an_error_and_plans_no_deletion(tmp_path: Path) -> None:
    docs = product_docs(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        docs.chmod(0o311)  # can enter, cannot list
        try:
            with permissions_enforced(), pytest.raises(SourceError, match="cannot list the folder"):
                kb.reindex(docs, dry_run=True)
        finally:
            docs.chmod(0o755)
        assert len(kb.manifest.documents) == 12


# -- 2. mass-delete guard ---------------------------------------------------------------------------------
def test_emptied_folder_is_refused_unless_mass_delete_is_allowed(tmp_path: Path) -> None:
    docs = product_docs(tmp_path)
    index = small_index(tmp_path / "idx")
    with KnowledgeBase.open(index) as kb:
        kb.reindex(docs)
        shutil.rmtree(docs)
        docs.mkdir()  # a checkout that failed: the folder exists, empty
        report = kb.reindex(docs)
        assert report.deleted == [] and report.stopped and len(report.not_deleted) == 12
        assert "max_delete_fraction=0.5" in report.refused_deletes and "--allow-mass-delete" in report.refused_deletes
        assert len(kb.manifest.documents) == 12 and kb.store.count() == 12
    result = runner.invoke(app, ["reindex", str(docs), "--kb", str(index)])
    assert result.exit_code == 3 and "deletions refused" in result.output
    result = runner.invoke(app, ["reindex", str(docs), "--kb", str(index), "--allow-mass-delete", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["deleted"] == 12
    with KnowledgeBase.open(index) as kb:
        assert kb.manifest.documents == {} and kb.store.count() == 0


def _index_then_empty_ten(kb: KnowledgeBase, docs: Path) -> None:
    """Index the 12 product and ops pages, then truncate 10 of them: an interrupted sync."""
    kb.reindex(docs)
    for page in sorted(docs.rglob("*.md"))[:10]:
        page.write_bytes(b"")


def test_files_emptied_to_zero_bytes_count_as_deletions_for_the_guard(tmp_path: Path) -> None:
    """An interrupted sync that truncates every file was "12 changed" and left an index of 0 chunks."""
    docs = product_docs(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        _index_then_empty_ten(kb, docs)
        report = kb.reindex(docs)
        assert report.stopped and "emptied to 0 bytes" in report.refused_deletes and report.changed == []
        assert len(report.skipped) == 10 and kb.store.count() == 12
        assert kb.search("zqproduct3", k=1, mode="bm25")[0].doc_id == "docs:product/p3.md"
        report = kb.reindex(docs, allow_mass_delete=True)
        assert len(report.changed) == 10 and kb.store.count() == 2
        (docs / "product" / "p7.md").write_bytes(b"")  # one emptied file is an ordinary edit
        assert kb.reindex(docs).changed == ["docs:product/p7.md"]


def test_ordinary_deletions_are_not_refused(tmp_path: Path) -> None:
    docs = product_docs(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        for i in range(4):
            (docs / "ops" / f"o{i}.md").unlink()
        report = kb.reindex(docs)  # 4 of 12 (33%): under the fraction
        assert len(report.deleted) == 4 and not report.stopped


# -- 3. a lost store is detected and repaired ---------------------------------------------------------------
def test_lost_shard_is_reported_and_repair_re_embeds_only_what_is_missing(tmp_path: Path) -> None:
    docs = product_docs(tmp_path)
    index = small_index(tmp_path / "idx")
    with KnowledgeBase.open(index) as kb:
        kb.reindex(docs)
        # part of the shard lost: some documents' points are gone, the manifest still names them
        kb.store.delete_documents(["docs:product/p1.md", "docs:ops/o2.md"])
        kb.store.flush()
    with KnowledgeBase.open(index) as kb:
        assert kb.damage.damaged and set(kb.damage.missing) == {"docs:product/p1.md", "docs:ops/o2.md"}
        assert "kb reindex --all --repair" in kb.status().damage
        assert kb.search("zqproduct3", k=1, mode="bm25")[0].doc_id == "docs:product/p3.md"  # reads still work
        with pytest.raises(IndexDamagedError, match="--repair"):
            kb.reindex(docs)
        report = kb.reindex(docs, repair=True)
        assert sorted(report.repaired) == ["docs:ops/o2.md", "docs:product/p1.md"]
        assert report.chunks_written == 2 and report.unchanged == 10 and not kb.damage.damaged
        assert kb.search("zqproduct1", k=1, mode="bm25")[0].doc_id == "docs:product/p1.md"
    shutil.rmtree(index / "shard")  # the whole shard gone
    result = runner.invoke(app, ["status", "--kb", str(index)])
    assert result.exit_code == 0 and "missing 12 of their chunks" in result.output
    result = runner.invoke(app, ["reindex", "--all", "--repair", "--kb", str(index), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["repaired"] == 12
    with KnowledgeBase.open(index) as kb:
        assert not kb.damage.damaged and kb.store.count() == 12


ENTRY_WITHOUT_CHUNKS = {"doc_hash": "x", "mtime": 1.0, "size": 1, "source_format": "markdown", "title": "A"}


# -- 4. a malformed manifest is a clear error -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({"updated_at": 1.0}, "field 'documents' is missing"),
        ({"documents": {"a.md": ENTRY_WITHOUT_CHUNKS}}, "'a.md' is invalid: field 'chunks': Field required"),
        ({"documents": {"a.md": {**ENTRY_WITHOUT_CHUNKS, "chunks": "many"}}}, "field 'chunks'"),
    ],
)
def test_malformed_manifest_names_the_file_and_the_field(tmp_path: Path, manifest: dict, expected: str) -> None:
    index = tmp_path / "idx"
    with KnowledgeBase.open(index, **SMALL):
        pass
    (index / "manifest.sqlite").unlink()
    (index / "manifest.json").write_text(json.dumps(manifest))  # an index of an older kb, damaged
    result = runner.invoke(app, ["status", "--kb", str(index)])
    assert result.exit_code == 2 and "manifest.json" in result.output and expected in result.output
    assert "Traceback" not in result.output


# -- 6. an ingest ACL is kept by later reindexes (also over HTTP) ---------------------------------------------
def test_ingest_acl_survives_reindex_and_http_reindex(tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    write(hr, "salaries.md", "# Salaries\n\nLevel 5 earns zqhrpay 141,000 euros.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL, api_keys=KEYS) as kb:
        kb.ingest(hr, acl=["hr"])
        plan = kb.reindex(hr, dry_run=True)
        assert plan.acl_changed == []  # the old code planned "1 with a new ACL" here: public
        kb.reindex(hr)
        assert kb.search("zqhrpay", k=5, mode="bm25", user=Principal()) == []
        write(hr, "salaries.md", "# Salaries\n\nLevel 5 earns zqhrpay 145,000 euros now.\n")
        with served_app(kb) as base, httpx.Client(base_url=base, timeout=60) as client:
            run = client.post("/reindex", headers=auth(ADMIN), json={}).json()
            while run["state"] == "running":
                time.sleep(0.1)
                run = client.get(run["status_url"] if "status_url" in run else f"/reindex/{run['id']}",
                                 headers=auth(ADMIN)).json()  # fmt: skip
            assert run["state"] == "done" and run["report"]["changed"] == 1, run
            body = {"query": "zqhrpay", "mode": "bm25"}
            assert client.post("/search", headers=auth(READ), json=body).json()["hits"] == []
            assert client.post("/search", headers=auth(HR), json=body).json()["hits"][0]["doc_id"] == "hr:salaries.md"
        assert kb.manifest.documents["hr:salaries.md"].acl == ["hr"]


# -- 7. a document cannot widen the folder policy -------------------------------------------------------------
def test_document_metadata_cannot_publish_itself_out_of_a_restricted_folder(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "hr/*"\ngroups = ["hr"]\n')
    write(docs, "hr/payroll.html", '<html><head><meta name="kb:acl" content="public"></head>'
          "<body><h1>Payroll</h1><p>Payroll runs zqpayroll on the 25th.</p></body></html>")  # fmt: skip
    write(docs, "hr/narrow.md", "---\nacl: [hr-leads]\n---\n# Leads\n\nOnly zqleads may read this.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        assert kb.manifest.documents["docs:hr/payroll.html"].acl == ["hr"]
        assert kb.search("zqpayroll", k=5, mode="bm25", user=Principal(groups=["eng"])) == []
        assert kb.search("zqpayroll", k=1, mode="bm25", user=Principal(groups=["hr"]))[0].path == "hr/payroll.html"
        assert kb.manifest.documents["docs:hr/narrow.md"].acl == []  # hr-leads is not in the hr policy: only '*'


# -- 7b. a link, a broken new version or a lost rules file never opens a restricted document -----------------
def _visible(kb: KnowledgeBase, token: str, groups: list[str]) -> list[str]:
    return [h.doc_id for h in kb.search(token, k=5, mode="bm25", user=Principal(groups=groups))]


def test_a_link_inside_the_source_never_opens_what_its_real_path_keeps_to_a_group(tmp_path: Path) -> None:
    """``latest -> v2`` sorts first, so the walk read v2/hr/salary.md as latest/hr/salary.md, where the
    ``v2/hr/*`` rule does not match: it was public. A file link was a public copy."""
    docs = tmp_path / "docs"
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "v2/hr/*"\ngroups = ["hr"]\n')
    write(docs, "v2/hr/salary.md", "# Salary bands\n\nSalary bands zqlinked.\n")
    write(docs, "v2/public.md", "# Public\n\nOpen page zqopen.\n")
    (docs / "latest").symlink_to("v2")
    (docs / "alias.md").symlink_to("v2/hr/salary.md")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        assert _visible(kb, "zqlinked", ["eng"]) == []
        assert set(_visible(kb, "zqlinked", ["hr"])) == {"docs:latest/hr/salary.md", "docs:alias.md"}
        assert _visible(kb, "zqopen", ["eng"]) == ["docs:latest/public.md"]  # a link alone narrows nothing


def test_a_folder_link_out_of_the_source_is_reported_not_silently_ignored(tmp_path: Path) -> None:
    write(tmp_path / "outside", "o.md", "# O\n\nzqoutside\n")
    write(tmp_path / "docs", "a.md", "# A\n\nText.\n")
    (tmp_path / "docs" / "ext").symlink_to(tmp_path / "outside")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        (skip,) = kb.reindex(tmp_path / "docs").skipped
        assert skip.doc_id == "docs:ext/" and "outside the source" in skip.reason, skip
        assert _visible(kb, "zqoutside", ["*"]) == []


def test_a_narrower_policy_reaches_a_document_whose_new_version_fails_to_parse(tmp_path: Path) -> None:
    """Access changes were computed for unchanged documents only: a document kept at its indexed version
    because the edit broke it (or its folder became unreadable) kept its old, wider groups."""
    docs = tmp_path / "docs"
    write(docs, "plan.md", "# Plan\n\nMerger codename zqotter.\n")
    write(docs, "other.md", "# Other\n\nNothing here.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        write(docs, "plan.md", "---\ntitle: [unclosed\n---\n# Plan\n\nzqotter\n")
        kb.update_source("docs", acl=["exec"])
        for _ in range(2):  # the second run skips the remembered failure without parsing it
            report = kb.reindex(docs)
            assert [s.doc_id for s in report.skipped] == ["docs:plan.md"]
            assert _visible(kb, "zqotter", ["eng"]) == [] and _visible(kb, "zqotter", ["exec"]) == ["docs:plan.md"]
        kb.update_source("docs", acl=None)  # wider again: only content read again may earn it
        kb.reindex(docs)
        assert _visible(kb, "zqotter", ["eng"]) == []
        write(docs, "plan.md", "# Plan\n\nFixed zqotter.\n")
        kb.reindex(docs)
        assert _visible(kb, "zqotter", ["eng"]) == ["docs:plan.md"]


@pytest.mark.parametrize("gone", ["deleted", "a link to nothing", "a folder"])
def test_a_rules_file_that_is_gone_or_unreadable_stops_the_reindex_instead_of_opening_documents(
    tmp_path: Path, gone: str
) -> None:
    """A checkout without kb-acl.toml (or with a broken link to it) made every document public, silently."""
    docs = tmp_path / "docs"
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "hr/*"\ngroups = ["hr"]\n')
    write(docs, "hr/s.md", "# S\n\nzqrules secret.\n")
    write(docs, "p.md", "# P\n\nPublic page.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        (docs / "kb-acl.toml").unlink()
        if gone == "a link to nothing":
            (docs / "kb-acl.toml").symlink_to(tmp_path / "nowhere.toml")
        elif gone == "a folder":
            (docs / "kb-acl.toml").mkdir()
        with pytest.raises((SourceError, ConfigError), match=r"kb-acl\.toml"):
            kb.reindex(docs)
        with pytest.raises((SourceError, ConfigError), match=r"kb-acl\.toml"):
            kb.reindex(docs, full=True)
        assert _visible(kb, "zqrules", ["eng"]) == []
        if gone == "deleted":
            (docs / "kb-acl.toml").write_bytes(b"")  # what an interrupted sync leaves: not a decision
            with pytest.raises(SourceError, match=r"is empty \(0 bytes\)"):
                kb.reindex(docs)
            (docs / "kb-acl.toml").write_text("# no rules\n")  # on purpose: a file that says so
            assert kb.reindex(docs).acl_changed == ["docs:hr/s.md"]
            assert _visible(kb, "zqrules", ["eng"]) == ["docs:hr/s.md"]


def _restricted_docs(root: Path) -> Path:
    docs = root / "docs"
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "hr/*"\ngroups = ["hr"]\n')
    write(docs, "hr/s.md", "# S\n\nzqguard secret.\n")
    write(docs, "p.md", "# P\n\nPublic page.\n")
    return docs


def test_the_rules_file_guard_survives_renames_rebuilds_and_indexes_that_never_recorded_it(tmp_path: Path) -> None:
    """A review found three ways past it: a rename (planned without the guard, its status dropped), a full
    rebuild (never recorded that the rules were read) and a sources.json from before the guard."""
    docs = _restricted_docs(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs, full=True)  # a rebuild records it too
        kb.rename_source("docs", "handbook")  # and a rename carries it
        (docs / "kb-acl.toml").unlink()
        with pytest.raises(SourceError, match="is gone"):
            kb.rename_source("handbook", "wiki")
        with pytest.raises(SourceError, match="is gone"):
            kb.reindex(source="handbook")
        assert _visible(kb, "zqguard", ["eng"]) == [] and "wiki" not in kb.sources
    state = json.loads((tmp_path / "idx" / "sources.json").read_text())
    state["status"]["handbook"].pop("rules_file")  # as an index from before the guard wrote it
    (tmp_path / "idx" / "sources.json").write_text(json.dumps(state))
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        with pytest.raises(SourceError, match="does not record"):
            kb.reindex(source="handbook")
        report = kb.reindex(source="handbook", full=True)
        assert report.stopped and "would open 1 documents" in report.refused_deletes
        assert _visible(kb, "zqguard", ["eng"]) == []
        write(docs, "kb-acl.toml", "# no rules\n")
        kb.reindex(source="handbook")
        assert _visible(kb, "zqguard", ["eng"]) == ["handbook:hr/s.md"]


def test_one_sources_missing_rules_file_does_not_stop_the_others(tmp_path: Path) -> None:
    a = _restricted_docs(tmp_path / "a")
    write(tmp_path / "c", "one.md", "# One\n\nText.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(a)
        kb.reindex(tmp_path / "c")
        (a / "kb-acl.toml").unlink()
        (tmp_path / "c" / "one.md").unlink()
        write(tmp_path / "c", "two.md", "# Two\n\nzqother\n")
        job = kb.reindex_in_background()  # what POST /reindex runs: failed, with the others' report kept
        with pytest.raises(SourceError, match=r"source 'docs'.*other 1 sources were reindexed"):
            job.wait(120)
        assert job.report is not None and job.report.added == ["c:two.md"] and job.report.deleted == ["c:one.md"]
        assert _visible(kb, "zqother", ["*"]) == ["c:two.md"] and "c:one.md" not in kb.manifest.documents
        assert _visible(kb, "zqguard", ["eng"]) == []
    write(tmp_path / "c", "three.md", "# Three\n\nMore.\n")
    (tmp_path / "idx" / "kb.toml").write_text('chunk_max_tokens = 64\nchunk_min_tokens = 8\n')
    result = runner.invoke(app, ["reindex", "--all", "--kb", str(tmp_path / "idx"), "--json"])
    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert report["added_ids"] == ["c:three.md"] and "source 'docs'" in report["error"], report


def test_a_link_into_an_excluded_folder_or_name_is_not_indexed(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "private/board.md", "# Board\n\nzqboard minutes.\n")
    write(docs, "drafts.secret.md", "# Draft\n\nzqdraft text.\n")
    write(docs, "public/page.md", "# Page\n\nPublic.\n")
    (docs / "public" / "archive").symlink_to("../private")
    (docs / "public" / "memo.md").symlink_to("../drafts.secret.md")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.add_source("docs", docs, exclude=["private", "*.secret.md"])
        report = kb.reindex(source="docs")
        assert report.added == ["docs:public/page.md"] and report.ignored == {"(a link to an excluded name)": 2}
        assert _visible(kb, "zqboard", ["*"]) == [] and _visible(kb, "zqdraft", ["*"]) == []


def test_a_kept_document_reached_through_a_link_narrows_by_its_real_path_too(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "v2/hr/*"\ngroups = ["hr"]\n')
    write(docs, "v2/hr/salary.md", "# Salary\n\nzqreal bands.\n")
    (docs / "latest").symlink_to("v2")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL, max_file_bytes=2000) as kb:
        kb.reindex(docs)
        write(docs, "kb-acl.toml", '[[rule]]\npattern = "v2/hr/*"\ngroups = ["hr-leads"]\n')
        write(docs, "v2/hr/salary.md", "# Salary\n\n" + "zqreal grows. " * 400)  # over max_file_bytes: kept
        report = kb.reindex(docs)
        assert [s.doc_id for s in report.skipped] == ["docs:latest/hr/salary.md"]
        assert _visible(kb, "zqreal", ["hr"]) == []  # hr ∩ hr-leads: trusted callers only, until it is read again
        assert kb.manifest.documents["docs:latest/hr/salary.md"].acl == []


def test_a_rewritten_document_whose_file_cannot_be_read_narrows_and_reports_once(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "plan.md", "# Plan\n\nzqrewrite codename.\n")
    write(docs, "other.md", "# Other\n\nText.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL, parse_workers=0) as kb:
        kb.reindex(docs)
        (docs / "plan.md").chmod(0)
        kb.update_source("docs", acl=["exec"], url="https://wiki/{path}")  # a rewrite and a narrower policy
        try:
            with permissions_enforced():
                report = kb.reindex(docs)
        finally:
            (docs / "plan.md").chmod(0o644)
        assert [s.doc_id for s in report.skipped] == ["docs:plan.md"]
        assert _visible(kb, "zqrewrite", ["eng"]) == [] and _visible(kb, "zqrewrite", ["exec"]) == ["docs:plan.md"]
        write(docs, "plan.md", "# Plan\n\nzqrewrite revised.\n")
        write(docs, "kb-acl.toml", '[[rule]]\npattern = "*"\ngroups = ["board"]\n')
        report = kb.reindex(docs)  # changed and narrowed: one document, counted once
        assert report.changed == ["docs:plan.md"] and "docs:plan.md" not in report.acl_changed


def test_a_rename_refuses_to_drop_a_document_whose_file_fails_now(tmp_path: Path) -> None:
    """The rename re-read every file under the new name and deleted the old ids it could not adopt."""
    docs = tmp_path / "docs"
    write(docs, "runbook.md", "# Failover\n\nFailover step zqrename.\n")
    write(docs, "other.md", "# Other\n\nText.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        write(docs, "runbook.md", "---\nowner: [oops\n---\n# Failover\n\nzqrename revised\n")
        with pytest.raises(ConfigError, match=r"docs:runbook\.md"):
            kb.rename_source("docs", "ops")
        assert "ops" not in kb.sources and _visible(kb, "zqrename", ["*"]) == ["docs:runbook.md"]
        write(docs, "runbook.md", "# Failover\n\nFixed zqrename.\n")
        kb.rename_source("docs", "ops")
        assert _visible(kb, "zqrename", ["*"]) == ["ops:runbook.md"]


def test_third_review_of_the_guards(tmp_path: Path) -> None:
    """What a third review found: a kept emptied file did not narrow; an index that never recorded its rules file
    let changed documents widen; a comment-only rules file could never be removed; a document indexed before
    kb kept its real path never got one."""
    from dataclasses import replace

    docs = tmp_path / "docs"
    for i in range(3):
        write(docs, f"secret/s{i}.md", f"# S{i}\n\nzqempty{i} text.\n")
    (docs / "alias.md").symlink_to("secret/s0.md")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        entry = kb.manifest.documents["docs:alias.md"]
        assert entry.real == "secret/s0.md"
        kb.manifest.commit(put={"docs:alias.md": replace(entry, real="")})  # as written before the field
        kb.reindex(docs)
        assert kb.manifest.documents["docs:alias.md"].real == "secret/s0.md"
        write(docs, "kb-acl.toml", '[[rule]]\npattern = "secret/*"\ngroups = ["hr"]\n')
        for i in range(3):
            (docs / "secret" / f"s{i}.md").write_bytes(b"")  # an interrupted sync, and the new rules with it
        report = kb.reindex(docs)
        assert report.stopped and _visible(kb, "zqempty1", ["eng"]) == [] and _visible(kb, "zqempty1", ["hr"])
        for i in range(3):
            write(docs, f"secret/s{i}.md", f"# S{i}\n\nzqempty{i} text, edited.\n")
        kb.reindex(docs)
        write(docs, "kb-acl.toml", "# no rules\n")  # dropped on purpose, then the file may go
        kb.reindex(docs)
        (docs / "kb-acl.toml").unlink()
        kb.reindex(docs)
        assert _visible(kb, "zqempty1", ["eng"]) == ["docs:secret/s1.md"]
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "secret/*"\ngroups = ["hr"]\n')
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
    state = json.loads((tmp_path / "idx" / "sources.json").read_text())
    state["status"]["docs"].pop("rules_file")
    (tmp_path / "idx" / "sources.json").write_text(json.dumps(state))
    (docs / "kb-acl.toml").unlink()
    write(docs, "secret/s2.md", "# S2\n\nzqempty2 changed without its rules.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        with pytest.raises(SourceError, match="does not record"):
            kb.reindex(docs)
        assert _visible(kb, "zqempty2", ["eng"]) == []


def test_a_rename_reads_every_file_and_keeps_the_mass_delete_guard(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    for i in range(6):
        write(docs, f"d{i}.md", f"# D{i}\n\nzqkeep{i} text.\n")
    write(tmp_path / "common", "c.md", "# C\n\nShared.\n")
    (docs / "shared").symlink_to(tmp_path / "common")  # a folder link out: reported, and no obstacle
    with KnowledgeBase.open(tmp_path / "idx", **SMALL, parse_workers=0) as kb:
        kb.reindex(docs)
        kb.rename_source("docs", "src")
        (docs / "d1.md").chmod(0)  # same size and mtime: only reading it shows it cannot be read
        try:
            with permissions_enforced(), pytest.raises(ConfigError, match=r"src:d1\.md"):
                kb.rename_source("src", "src2")
        finally:
            (docs / "d1.md").chmod(0o644)
        for i in range(1, 6):
            (docs / f"d{i}.md").unlink()
        with pytest.raises(ConfigError, match="max_delete_fraction"):
            kb.rename_source("src", "src2")
        assert len(kb.manifest.of_source("src")) == 6 and "src2" not in kb.sources


def test_files_emptied_to_zero_bytes_are_guarded_in_ingest_and_full_rebuild_too(tmp_path: Path) -> None:
    docs = product_docs(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        _index_then_empty_ten(kb, docs)
        assert kb.ingest(docs).stopped and kb.store.count() == 12
        report = kb.reindex(docs, full=True)
        assert report.stopped and "emptied to 0 bytes" in report.refused_deletes and kb.store.count() == 12


def test_a_full_rebuild_refuses_to_drop_a_document_it_cannot_parse_now(tmp_path: Path) -> None:
    """A reindex keeps the indexed version of a file whose edit broke it; --full rebuilt without it and
    reported "0 deleted"."""
    docs = tmp_path / "docs"
    for name in "abc":
        write(docs, f"{name}.md", f"# {name}\n\nDoc {name}.\n")
    write(docs, "runbook.md", "# Failover\n\nFailover step zqkestrel.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        write(docs, "runbook.md", "---\nowner: [oops\n---\n# Failover\n\nzqkestrel revised\n")
        kb.reindex(docs)
        report = kb.reindex(docs, full=True)
        assert "docs:runbook.md" in report.refused_deletes and report.stopped, report.refused_deletes
        assert _visible(kb, "zqkestrel", ["*"]) == ["docs:runbook.md"]
        report = kb.reindex(docs, full=True, allow_mass_delete=True)
        assert not report.stopped and _visible(kb, "zqkestrel", ["*"]) == []


@pytest.mark.parametrize(
    ("front", "named"),
    [("weight: .inf", "'weight'"), ("x: [1, .nan]", "'x'"), ('k: "\\uD800"', "'k'"), ('title: "\\uD800"', "'title'"),
     ("n: 99999999999999999999", "'n'")],
)  # fmt: skip
def test_a_front_matter_value_the_store_cannot_hold_skips_that_file_not_every_reindex(
    tmp_path: Path, front: str, named: str
) -> None:
    """The store refused the batch with a raw TypeError: every later reindex of every source stopped there."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "one.md", "# A\n\nalpha\n")
    write(b, "one.md", "# B\n\nbeta\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.add_source("a", a)
        kb.add_source("b", b)
        for name in ("a", "b"):
            kb.reindex(source=name)
        write(a, "bad.md", f"---\n{front}\n---\n# Bad\n\nbad\n")
        write(b, "two.md", "# B2\n\nzqgannet\n")
        (b / "one.md").unlink()
        reports = [kb.reindex(source=name) for name in ("a", "b")]
        (skip,) = reports[0].skipped
        assert skip.doc_id == "a:bad.md" and named in skip.reason and "front matter" in skip.reason, skip.reason
        assert reports[1].added == ["b:two.md"] and reports[1].deleted == ["b:one.md"]
        assert _visible(kb, "zqgannet", ["*"]) == ["b:two.md"]


def test_a_source_metadata_value_the_store_cannot_hold_is_a_settings_error(tmp_path: Path) -> None:
    write(tmp_path / "docs", "a.md", "# A\n\nText.\n")
    index = small_index(tmp_path / "idx")
    with (index / "kb.toml").open("a") as toml:
        toml.write('[[sources]]\nname = "docs"\npath = "../docs"\nmetadata = { weight = inf }\n')
    with pytest.raises(ConfigError, match=r"metadata 'weight': inf is not a finite number"):
        KnowledgeBase.open(index)


# -- 8, 12, 13. HTTP status, errors and misuse ----------------------------------------------------------------
@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("trust-http")
    docs = product_docs(root)
    kb = KnowledgeBase.open(root / "idx", **SMALL, api_keys=KEYS)
    kb.reindex(docs)
    with served_app(kb, docs) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client, kb, docs
    kb.close()


def test_read_key_status_shows_its_own_counts_and_no_keys_or_paths(http) -> None:
    client, kb, docs = http
    status = client.get("/status", headers=auth(READ)).json()
    text = json.dumps(status)
    assert status["documents"] == 12 and "api_keys" not in status["settings"]
    assert str(kb.path) not in text and str(docs) not in text and "hr-app" not in text
    admin = client.get("/status", headers=auth(ADMIN)).json()
    assert admin["path"] == str(kb.path) and {k["name"] for k in admin["settings"]["api_keys"]} >= {"hr-app"}


def test_read_keys_see_a_model_folder_by_its_name_not_its_path(tmp_path: Path) -> None:
    """``kb tune`` installs ``reranker_model`` as an absolute path: read keys saw where the server keeps files."""
    folder = tmp_path / "srv" / "models" / "reranker-ab12"
    folder.mkdir(parents=True)
    settings = Settings(reranker_model=str(folder), embedder_model="./models/minilm")
    shown = settings.public_dump(full=False)
    assert (shown["reranker_model"], shown["embedder_model"]) == ("reranker-ab12", "minilm")
    assert str(tmp_path) not in json.dumps(shown)
    assert settings.public_dump()["reranker_model"] == str(folder)  # admin keys see the path
    hub = Settings().public_dump(full=False)
    assert (hub["embedder_model"], hub["reranker_model"]) == (Settings().embedder_model, Settings().reranker_model)


@pytest.mark.parametrize("value", ["\ud800", 2**63, -(2**63) - 1, [1, 2**64]])
def test_unstorable_filter_values_are_422_naming_the_field(http, value) -> None:
    client, _, _ = http
    raw = json.dumps({"query": "pricing", "filters": {"product": value}}, ensure_ascii=True)
    response = client.post("/search", headers={**auth(READ), "Content-Type": "application/json"}, content=raw)
    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["fields"]] == ["filters"]
    ask = json.dumps({"question": "pricing?", "filters": {"product": value}, "stream": True})
    streamed = client.post("/ask", headers={**auth(READ), "Content-Type": "application/json"}, content=ask)
    assert streamed.status_code == 422 and "Traceback" not in streamed.text and "TypeError" not in streamed.text


def test_status_during_a_full_rebuild_never_fails(http) -> None:
    client, kb, docs = http
    job = kb.reindex_in_background(docs, full=True)
    codes = []
    while job.running or len(codes) < 20:
        codes.append(client.get("/status", headers=auth(ADMIN)).status_code)
    job.wait()
    assert set(codes) == {200} and len(codes) >= 20


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [("GET", "/nowhere", 404, "not_found"), ("DELETE", "/search", 405, "method_not_allowed")],
)
def test_routing_errors_use_the_documented_shape(http, method: str, path: str, status: int, code: str) -> None:
    client, _, _ = http
    response = client.request(method, path, headers=auth(READ))
    assert response.status_code == status and set(response.json()) == {"error", "message", "fields"}
    assert response.json()["error"] == code


def test_body_errors_name_the_body_not_an_offset(http) -> None:
    client, _, _ = http
    broken = client.post("/search", headers={**auth(READ), "Content-Type": "application/json"}, content=b'{"query": ')
    assert broken.status_code == 422 and broken.json()["fields"][0]["field"] == "body"
    assert "invalid JSON" in broken.json()["fields"][0]["message"]
    not_object = client.post("/search", headers=auth(READ), json=["query"])
    assert not_object.status_code == 422 and not_object.json()["fields"][0]["field"] == "body"


def test_json_without_a_content_type_is_read_as_json(http) -> None:
    client, _, _ = http
    # what `curl -d '{...}'` sends: application/x-www-form-urlencoded
    response = client.post(
        "/search",
        headers={**auth(READ), "Content-Type": "application/x-www-form-urlencoded"},
        content=b'{"query": "zqproduct2", "k": 1, "mode": "bm25"}',
    )
    assert response.status_code == 200 and response.json()["hits"][0]["doc_id"] == "docs:product/p2.md"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"query": "x", "k": True}, "k"), ({"query": "x", "k": 2.0}, "k"), ({"question": "x", "stream": "yes"}, "stream")],
)
def test_no_lax_coercion_of_request_fields(http, body: dict, field: str) -> None:
    client, _, _ = http
    route = "/ask" if "question" in body else "/search"
    response = client.post(route, headers=auth(READ), json=body)
    assert response.status_code == 422 and response.json()["fields"][0]["field"] == field


def test_authorization_scheme_is_case_insensitive_and_required(http) -> None:
    client, _, _ = http
    body = {"query": "pricing", "k": 1}
    assert client.post("/search", headers={"Authorization": f"bearer {READ}"}, json=body).status_code == 200
    assert client.post("/search", headers={"Authorization": f"BEARER {READ}"}, json=body).status_code == 200
    bare = client.post("/search", headers={"Authorization": READ}, json=body)
    assert bare.status_code == 401 and "Bearer KEY" in bare.json()["message"]


# -- 9. streamed answers never show a leak --------------------------------------------------------------------
def test_a_leaking_answer_is_never_streamed(tmp_path: Path) -> None:
    docs = product_docs(tmp_path)

    def gullible(body: dict) -> str:
        return "Sure, here are my rules. " + SYSTEM_PROMPT

    with KnowledgeBase.open(tmp_path / "idx", **SMALL, api_keys=KEYS) as kb:
        kb.reindex(docs)
        with serve(FakeOpenAI(gullible)) as url:
            kb.use_llm(llm_for(url))
            pieces = [e for e in kb.ask_stream("What does product 3 cost?") if isinstance(e, str)]
            streamed = "".join(pieces)
            assert "Rules:" not in streamed and "Use only facts stated" not in streamed
            with served_app(kb) as base, httpx.Client(base_url=base, timeout=60) as client:
                body = {"question": "What does product 3 cost?", "stream": True}
                with client.stream("POST", "/ask", headers=auth(READ), json=body) as response:
                    events = [line for line in response.iter_lines() if line.startswith("data: ")]
            tokens = "".join(json.loads(e[6:]).get("text", "") for e in events[:-1])
            final = json.loads(events[-1][6:])
            assert "Use only facts stated" not in tokens and final["refusal_reason"] == "unsafe_output"


# -- 10. validation errors never echo a secret ----------------------------------------------------------------
def test_settings_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    (tmp_path / "kb.toml").write_text('[[api_keys]]\nkey = "short-secret-1"\nrole = "read"\n')
    with pytest.raises(ConfigError) as error:
        Settings.load(tmp_path)
    assert "api_keys.0.key" in str(error.value) and "short-secret-1" not in str(error.value)
    with pytest.raises(Exception) as direct:
        Settings(llm_api_key="sk-live-123", api_keys=[{"key": "tiny-secret"}])
    assert "tiny-secret" not in str(direct.value)


# -- 14. reading commands refuse a missing index ----------------------------------------------------------------
@pytest.mark.parametrize("command", [["search", "x"], ["ask", "x?"], ["status"], ["source", "list"]])
def test_reading_commands_refuse_a_missing_index_and_create_nothing(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nope"
    result = runner.invoke(app, [*command, "--kb", str(missing)])
    assert result.exit_code == 2 and "no index at" in result.output and "kb ingest" in result.output
    assert not missing.exists()


# -- 15. opening twice in one process ----------------------------------------------------------------------------
def test_an_index_in_a_read_only_folder_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """Every command, search and status included, died with "OSError: [Errno 30] Read-only file system: LOCK"."""
    write(tmp_path / "docs", "a.md", "# A\n\nText.\n")
    index = small_index(tmp_path / "idx")
    with KnowledgeBase.open(index, **SMALL) as kb:
        kb.reindex(tmp_path / "docs")
    (index / "LOCK").unlink()
    index.chmod(0o555)
    try:
        with permissions_enforced():
            result = runner.invoke(app, ["search", "text", "--kb", str(index)])
    finally:
        index.chmod(0o755)
    assert result.exit_code == 2 and "cannot open the index" in result.output, result.output
    assert "Traceback" not in result.output


def test_second_open_in_the_same_process_says_so_and_collection_releases_it(tmp_path: Path) -> None:
    first = KnowledgeBase.open(tmp_path / "idx", **SMALL)
    with pytest.raises(IndexLockedError, match=r"already open in this process.*close\(\)") as refused:
        KnowledgeBase.open(tmp_path / "idx", **SMALL)
    del first, refused  # the traceback would keep the frame, and so the object, alive
    gc.collect()
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as again:  # the lock went with the object
        assert again.store.count() == 0


# -- 16. kb.store.add: one codec for every chunk ------------------------------------------------------------------
def test_nodes_added_as_a_llamaindex_vector_store_are_first_class(tmp_path: Path) -> None:
    text = "# Ops guide\n\n## Restarts\n\nRestart the zqnodes worker with systemctl.\n"
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        nodes = MarkdownNodeParser().get_nodes_from_documents(
            [Document(text=text, doc_id="ops-guide", metadata={"team": "ops"})]
        )
        for node in nodes:
            node.embedding = kb.embedder.embed([node.get_content()])[0]
            node.id_ = f"my-id-{node.id_[:4]}"  # not a UUID
        kb.store.add(nodes)
        hit = kb.search("zqnodes", k=1, mode="bm25", user=Principal())[0]  # an ACL: the default policy (public)
        assert hit.doc_id == "nodes:ops-guide" and hit.header_path == "Ops guide > Restarts"
        assert kb.search("zqnodes", k=1, mode="bm25", filters={"team": "ops"})[0].doc_id == "nodes:ops-guide"
        assert kb.status().documents == 1 and kb.manifest.documents["nodes:ops-guide"].acl == [PUBLIC]
        assert {r["name"] for r in kb.source_rows()} == {"nodes"}
        kb.store.delete("ops-guide")
        assert kb.search("zqnodes", k=1, mode="bm25") == []


def test_threads_may_reindex_different_sources_at_once(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(20):
        write(a, f"a{i}.md", f"# A {i}\n\nAlpha text zqa{i}.\n")
        write(b, f"b{i}.md", f"# B {i}\n\nBeta text zqb{i}.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        errors: list[BaseException] = []

        def run(folder: Path) -> None:
            try:
                kb.reindex(folder)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(f,)) for f in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and len(kb.manifest.documents) == 40 and kb.store.count() == 40
        assert not (tmp_path / "idx" / "DIRTY").exists()


def test_reading_a_server_backed_index_configured_only_by_the_environment(tmp_path: Path, monkeypatch) -> None:
    """KB_QDRANT_URL alone (no kb.toml) names a server-backed index: reading commands must open it, and refuse
    — creating nothing — where there is none."""
    monkeypatch.setenv("KB_QDRANT_URL", "local")
    write(tmp_path / "docs", "a.md", "# Failover\n\nRun zqfailover promote on the replica.\n")
    with KnowledgeBase.open(tmp_path / "idx", chunk_max_tokens=64, chunk_min_tokens=8) as kb:
        kb.ingest(tmp_path / "docs")
    assert not (tmp_path / "idx" / "kb.toml").exists()
    found = CliRunner().invoke(app, ["search", "zqfailover", "--kb", str(tmp_path / "idx"), "--mode", "bm25"])
    assert found.exit_code == 0 and "zqfailover" in found.stdout, found.stdout
    missing = CliRunner().invoke(app, ["search", "zqfailover", "--kb", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "no index at" in missing.stderr
    assert not (tmp_path / "none").exists()
