"""Reindex: change detection by content hash, deletions on both legs, renames, identical content in two
documents, embedding reuse, settings that require --full, crash safety under a real kill -9 of a child
process at several points, the writer lock, and queries running during a background reindex."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kb import EmbedderMismatchError, FullRebuildRequired, IndexLockedError, KnowledgeBase
from tests.conftest import write

REPO = Path(__file__).resolve().parent.parent
CHILD = [sys.executable, str(REPO / "tests" / "crash_child.py")]
SETTINGS = dict(chunk_max_tokens=64, chunk_min_tokens=8)


def doc(name: str, version: int, sections: int = 3) -> str:
    body = [f"# Document {name}\n"]
    for s in range(sections):
        body.append(
            f"## Part {s}\n\nToken zq{name}v{version}s{s} marks version {version} of part {s} of {name}. "
            f"It explains how the {name} service handles retries, backoff and alerts in some detail.\n"
        )
    return "\n".join(body)


def make_corpus(root: Path, names: list[str], version: int = 1) -> None:
    for name in names:
        write(root, f"{name}.md", doc(name, version))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_mirrors(kb: KnowledgeBase, folder: Path) -> None:
    """Index content equals the folder: same documents, same versions, complete, nothing else."""
    files = {f"{folder.name}:{p.relative_to(folder).as_posix()}": sha(p) for p in folder.rglob("*.md")}
    assert {d: e.doc_hash for d, e in kb.manifest.documents.items()} == files
    versions = kb.store.versions()
    assert set(versions) == set(files.items())
    for (doc_id, _), count in versions.items():
        assert count == kb.manifest.documents[doc_id].chunks


def assert_one_version_each(kb: KnowledgeBase, allowed: dict[str, set[str]]) -> None:
    """After a crash: every stored document is in exactly one allowed version, complete, and matches the manifest."""
    versions = kb.store.versions()
    per_doc: dict[str, list[str]] = {}
    for (doc_id, doc_hash), count in versions.items():
        per_doc.setdefault(doc_id, []).append(doc_hash)
        assert count == kb.manifest.documents[doc_id].chunks
    for doc_id, hashes in per_doc.items():
        assert len(hashes) == 1, f"{doc_id} has {len(hashes)} versions"
        assert hashes[0] in allowed[doc_id] and kb.manifest.documents[doc_id].doc_hash == hashes[0]
    assert set(per_doc) == set(kb.manifest.documents)


def test_add_change_delete_rename_with_dry_run_plan(tmp_path: Path, backend: dict) -> None:
    docs = tmp_path / "docs"
    make_corpus(docs, ["alpha", "beta", "gamma", "delta"])
    with KnowledgeBase.open(tmp_path / "idx", **SETTINGS, **backend) as kb:
        first = kb.reindex(docs)
        assert sorted(first.added) == ["docs:alpha.md", "docs:beta.md", "docs:delta.md", "docs:gamma.md"]
        assert_mirrors(kb, docs)

        write(docs, "alpha.md", doc("alpha", 2))  # changed
        (docs / "beta.md").unlink()  # deleted
        (docs / "gamma.md").rename(docs / "sub-gamma.md")  # renamed = delete + add
        write(docs, "epsilon.md", doc("epsilon", 1))  # added
        plan = kb.reindex(docs, dry_run=True)
        assert plan.dry_run and plan.summary() == "2 added, 1 changed, 2 deleted, 1 unchanged"
        assert sorted(plan.added) == ["docs:epsilon.md", "docs:sub-gamma.md"] and plan.deleted == ["docs:beta.md", "docs:gamma.md"]
        assert kb.store.versions() and "docs:beta.md" in kb.manifest.documents  # nothing written by the dry run

        report = kb.reindex(docs)
        assert report.summary() == "2 added, 1 changed, 2 deleted, 1 unchanged"
        assert_mirrors(kb, docs)
        # Deleted from both legs: its unique token finds nothing, by BM25 or by dense search.
        assert not any("zqbetav1" in h.text for h in kb.search("zqbetav1s0", k=10, mode="bm25"))
        assert not any(h.doc_id == "docs:beta.md" for h in kb.search("beta service retries", k=20, mode="dense"))
        assert kb.search("zqalphav2s1", k=1, mode="bm25")[0].doc_id == "docs:alpha.md"
        # Work proportional to the change: the renamed file's chunks were not embedded again.
        assert report.chunks_reused >= 3
        again = kb.reindex(docs)
        assert (again.chunks_written, again.unchanged) == (0, 4)


def test_a_file_swapped_for_a_link_out_of_the_folder_is_never_read(tmp_path: Path) -> None:
    """A plan takes a listed regular file's stat from the listing instead of resolving its path again; a
    link — inside the folder (indexed under its own name) or out of it (refused) — still goes the long way,
    also when it replaces a file that was indexed."""
    docs, outside = tmp_path / "docs", tmp_path / "outside"
    make_corpus(docs, ["alpha", "beta"])
    write(outside, "private.md", doc("private", 1))
    (docs / "alias.md").symlink_to(docs / "alpha.md")
    (docs / "escape.md").symlink_to(outside / "private.md")
    with KnowledgeBase.open(tmp_path / "idx", **SETTINGS) as kb:
        first = kb.reindex(docs)
        assert sorted(first.added) == ["docs:alias.md", "docs:alpha.md", "docs:beta.md"]
        assert {s.doc_id: s.reason for s in first.skipped}.keys() == {"docs:escape.md"}
        assert "outside the ingested folder" in first.skipped[0].reason
        (docs / "beta.md").unlink()
        (docs / "beta.md").symlink_to(outside / "private.md")
        second = kb.reindex(docs)
        assert [s.doc_id for s in second.skipped] == ["docs:beta.md", "docs:escape.md"]
        assert kb.manifest.documents["docs:beta.md"].doc_hash == sha_v("beta", 1)  # kept as indexed
        assert not kb.search("zqprivatev1s0", k=5, mode="bm25")


def test_a_folder_swapped_for_a_link_while_the_plan_runs_is_never_read(tmp_path: Path, monkeypatch) -> None:
    """The walk resolves a folder once; its files are planned later. If the folder is replaced by a link out of
    the tree in between, the plan must not hash (read) the outside file from the listing's word (found by a
    hostile review). The attacker's move is made at a fixed point, while the plan hashes the folder's first
    file — no timing luck."""
    import kb.indexing.plan as plan_module
    from kb.loading import FileInfo

    docs, outside = tmp_path / "docs", tmp_path / "outside"
    write(docs, "d/a.md", doc("a", 1))
    write(docs, "d/b.md", doc("b", 1))
    write(outside, "b.md", doc("private", 1))
    hashed: list[str] = []
    real_hash = plan_module.hash_file

    def hash_and_swap(info: FileInfo) -> str:  # the plan's own hash_file, with the attacker's move
        hashed.append(os.path.realpath(info.path))
        if info.path.name == "a.md":
            (docs / "d").rename(tmp_path / "d-moved")
            (docs / "d").symlink_to(outside, target_is_directory=True)
        return real_hash(info)

    monkeypatch.setattr(plan_module, "hash_file", hash_and_swap)
    with KnowledgeBase.open(tmp_path / "idx", **SETTINGS) as kb:
        report = kb.reindex(docs)
        assert not any(path.startswith(str(outside)) for path in hashed)
        assert "outside the ingested folder" in {s.doc_id: s.reason for s in report.skipped}["docs:d/b.md"]
        assert not kb.search("zqprivatev1s0", k=5, mode="bm25")


def test_identical_content_in_two_documents_survives_deleting_one(tmp_path: Path, backend: dict) -> None:
    docs = tmp_path / "docs"
    write(docs, "a.md", doc("same", 1))
    write(docs, "b.md", doc("same", 1))
    with KnowledgeBase.open(tmp_path / "idx", **SETTINGS, **backend) as kb:
        report = kb.reindex(docs)
        assert report.chunks_reused == report.chunks_written // 2  # b.md's vectors came from a.md's
        (docs / "a.md").unlink()
        kb.reindex(docs)
        assert_mirrors(kb, docs)
        assert {h.doc_id for h in kb.search("zqsamev1s0", k=5, mode="bm25")} == {"docs:b.md"}


def test_chunk_setting_change_requires_full_rebuild(tmp_path: Path, backend: dict) -> None:
    docs = tmp_path / "docs"
    make_corpus(docs, ["alpha", "beta"])
    with KnowledgeBase.open(tmp_path / "idx", **SETTINGS, **backend) as kb:
        kb.reindex(docs)
    with KnowledgeBase.open(tmp_path / "idx", chunk_max_tokens=128, chunk_min_tokens=8, **backend) as kb:
        with pytest.raises(FullRebuildRequired, match="--full"):
            kb.reindex(docs)
        report = kb.reindex(docs, full=True)
        assert sorted(report.added) == ["docs:alpha.md", "docs:beta.md"]
        assert kb.info.chunking["chunk_max_tokens"] == 128 and kb.status().chunking["chunk_max_tokens"] == 128
        assert_mirrors(kb, docs)
        assert kb.search("zqbetav1s2", k=1, mode="bm25")[0].doc_id == "docs:beta.md"
        assert not (tmp_path / "idx" / "next").exists()
    with KnowledgeBase.open(tmp_path / "idx", chunk_max_tokens=128, chunk_min_tokens=8, **backend) as kb:
        assert kb.reindex(docs).chunks_written == 0  # the new settings are now the index's own


def test_embedder_change_opens_only_for_a_full_rebuild(tmp_path: Path, other_embedder: Path, backend: dict) -> None:
    docs = tmp_path / "docs"
    make_corpus(docs, ["alpha"])
    with KnowledgeBase.open(tmp_path / "idx", **SETTINGS, **backend) as kb:
        kb.reindex(docs)
    with pytest.raises(EmbedderMismatchError):
        KnowledgeBase.open(tmp_path / "idx", embedder_model=str(other_embedder), **SETTINGS, **backend)
    with KnowledgeBase.open(
        tmp_path / "idx", for_rebuild=True, embedder_model=str(other_embedder), **SETTINGS, **backend
    ) as kb:
        with pytest.raises(FullRebuildRequired, match="built with embedder"):
            kb.reindex(docs)
        kb.reindex(docs, full=True)
        assert kb.info.embedder["name"] == str(other_embedder)
        assert kb.search("zqalphav1s0", k=1)[0].doc_id == "docs:alpha.md"


def run_child(index: Path, docs: Path, point: str, n: int, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CHILD, str(index), str(docs), point, str(n), *flags], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("point", "n", "flags"),
    [
        ("upsert", 1, ()),  # new version written, manifest not switched
        pytest.param("manifest_write", 1, (), marks=pytest.mark.slow),  # manifest switched, old version not yet deleted
        pytest.param("delete_version", 1, (), marks=pytest.mark.slow),  # first old version deleted, others pending
        ("upsert", 2, ()),  # between two batches
        ("swap", 1, ("--full",)),  # full rebuild: shard moved into place, manifest not yet
        pytest.param("manifest_write", 1, ("--full",), marks=pytest.mark.slow),  # full rebuild: staging written
    ],
)
def test_kill_9_at_any_point_leaves_each_document_old_or_new(
    tmp_path: Path, indexed_v1: tuple[Path, Path], point: str, n: int, flags: tuple
) -> None:
    docs, index = tmp_path / "docs", tmp_path / "idx"
    shutil.copytree(indexed_v1[0], docs)
    shutil.copytree(indexed_v1[1], index)
    with KnowledgeBase.open(index, **SETTINGS) as kb:  # the source's folder moved (the copy): nothing re-embedded
        kb.update_source("docs", path=docs)
        assert kb.reindex(docs).summary() == "0 added, 0 changed, 0 deleted, 100 unchanged"
    names = [p.stem for p in docs.glob("*.md")]
    old = {f"docs:{name}.md": sha(docs / f"{name}.md") for name in names}
    make_corpus(docs, names, version=2)  # every document changes: several batches of work
    new = {f"docs:{name}.md": sha(docs / f"{name}.md") for name in names}

    killed = run_child(index, docs, point, n, *flags)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    with KnowledgeBase.open(index, **SETTINGS) as kb:  # opens cleanly: unfinished work rolled back or forward
        assert_one_version_each(kb, {d: {old[d], new[d]} for d in old})
        hit = kb.search("zqd7v1s1 zqd7v2s1", k=1, mode="bm25")[0]
        assert hit.doc_id == "docs:d7.md"  # and answers
        kb.reindex(docs)  # the next reindex completes the job
        assert_mirrors(kb, docs)


@pytest.fixture(scope="module")
def indexed_v1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """100 documents (> 256 chunks: more than one write batch), indexed once by a child process."""
    root = tmp_path_factory.mktemp("v1")
    docs, index = root / "docs", root / "idx"
    make_corpus(docs, [f"d{i}" for i in range(100)], version=1)
    assert "finished" in run_child(index, docs, "none", 0).stdout
    return docs, index


@pytest.mark.slow
def test_external_kill_during_a_long_reindex(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    names = [f"d{i}" for i in range(60)]
    make_corpus(docs, names, version=1)
    index = tmp_path / "idx"
    run_child(index, docs, "none", 0)
    make_corpus(docs, names, version=2)
    child = subprocess.Popen([*CHILD, str(index), str(docs), "none", "0"], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:  # kill it once a third of the documents are through, the rest still to do
        if line.startswith("progress ") and int(line.split()[1].split("/")[0]) >= 20:
            break
    assert child.poll() is None and (index / "DIRTY").exists()  # still running, in the middle of its writes
    child.send_signal(signal.SIGKILL)
    rest = child.stdout.read()
    assert child.wait() == -signal.SIGKILL and "finished" not in rest
    with KnowledgeBase.open(index, **SETTINGS) as kb:
        assert_one_version_each(kb, {f"docs:{n}.md": {sha_v(n, 1), sha_v(n, 2)} for n in names})
        kb.reindex(docs)
        assert_mirrors(kb, docs)


def sha_v(name: str, version: int) -> str:
    return hashlib.sha256(doc(name, version).encode()).hexdigest()


def test_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    make_corpus(docs, ["alpha"])
    index = tmp_path / "idx"
    holder = subprocess.Popen([*CHILD, str(index), str(docs), "hold", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(IndexLockedError, match=rf"pid {holder.pid} on "):
            KnowledgeBase.open(index, **SETTINGS)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f'"pid": {holder.pid}' in (index / "LOCK").read_text()  # the dead holder's lock file is still there
    with KnowledgeBase.open(index, **SETTINGS) as kb:  # …and is taken over
        kb.reindex(docs)
        assert f'"pid": {os.getpid()}' in (index / "LOCK").read_text()


def test_queries_during_a_background_reindex_never_fail_or_mix_versions(tmp_path: Path, backend: dict) -> None:
    docs = tmp_path / "docs"
    names = [f"d{i}" for i in range(40)]
    make_corpus(docs, names, version=1)
    with KnowledgeBase.open(tmp_path / "idx", **SETTINGS, **backend) as kb:
        kb.reindex(docs)
        make_corpus(docs, names, version=2)
        job = kb.reindex_in_background(docs)
        checks, errors = 0, []
        while job.running or checks < 20:
            try:
                hits = kb.search("zqd5v1s0 zqd5v2s0 d5 service", k=20, mode="bm25")
                versions = {h.text.split("marks version ")[1].split(" ")[0] for h in hits if h.doc_id == "docs:d5.md"}
                assert len(versions) == 1, versions  # never both versions of d5
                assert any(h.doc_id == "docs:d5.md" for h in hits)  # and never neither
            except Exception as exc:
                errors.append(exc)
            checks += 1
            if not job.running and checks >= 20:
                break
            time.sleep(0.005)  # let the writer run: local mode's Python search would otherwise starve it
        report = job.wait()
        assert errors == [] and checks > 20
        assert len(report.changed) == 40
        assert_mirrors(kb, docs)


def test_a_file_that_failed_to_parse_is_not_parsed_again_until_it_changes(tmp_path: Path, backend: dict) -> None:
    """A broken file never enters the manifest, so every reindex planned it as new and parsed it again: one
    stuck PDF cost max_file_seconds (60 s) on each reindex of an unchanged folder. Its failure is now
    remembered with its content hash; it stays reported as skipped, with its reason, on every reindex."""
    from kb.torture import _pdf_page

    def pdf(words: str) -> bytes:
        return _pdf_page(b"BT /F1 12 Tf 72 720 Td (%s) Tj ET" % words.encode())

    docs = tmp_path / "docs"
    make_corpus(docs, ["alpha"])
    good = pdf("Version one of the manual: zqmanualv1 explains the pump.")
    write(docs, "manual.pdf", good)
    write(docs, "broken.pdf", good[: len(good) // 2])
    with KnowledgeBase.open(tmp_path / "idx", **SETTINGS, **backend) as kb:
        first = kb.reindex(docs)
        reason = {s.doc_id: s.reason for s in first.skipped}["docs:broken.pdf"]
        assert "docs:manual.pdf" in first.added

        again = kb.reindex(docs)
        skipped = {s.doc_id: s.reason for s in again.skipped}
        assert skipped["docs:broken.pdf"].startswith(reason) and "--verify" in skipped["docs:broken.pdf"]
        assert again.timings["parse"] == 0.0 and not again.added  # nothing was parsed

        # An indexed document whose new version fails keeps its old version, and that failure is remembered.
        write(docs, "manual.pdf", good[: len(good) // 3])
        failed = kb.reindex(docs)
        assert "docs:manual.pdf" in {s.doc_id for s in failed.skipped}
        remembered = kb.reindex(docs)
        assert {s.doc_id for s in remembered.skipped} == {"docs:broken.pdf", "docs:manual.pdf"}
        assert remembered.timings["parse"] == 0.0
        assert kb.search("zqmanualv1", k=1, mode="bm25")[0].doc_id == "docs:manual.pdf"

        # --verify parses the remembered files again; a repaired file is indexed and forgotten as a failure.
        verified = kb.reindex(docs, verify=True)
        assert verified.timings["parse"] > 0
        assert not any(s.reason.endswith("parses it again)") for s in verified.skipped)
        write(docs, "broken.pdf", pdf("Repaired: zqrepaired is readable now."))
        repaired = kb.reindex(docs)
        assert repaired.added == ["docs:broken.pdf"]
        assert kb.search("zqrepaired", k=1, mode="bm25")[0].doc_id == "docs:broken.pdf"
        assert {s.doc_id for s in kb.reindex(docs).skipped} == {"docs:manual.pdf"}


def test_a_file_stopped_by_a_limit_is_remembered_only_after_failing_twice(tmp_path: Path) -> None:
    """A parse stopped by max_file_seconds may pass on a less loaded machine: it is parsed again once, and
    remembered after the second identical failure. A damaged memory costs parses, never a reindex."""
    from kb.torture import make_torture_folder

    torture = tmp_path / "torture"
    make_torture_folder(torture, big_mb=1, single_line_mb=1)
    docs = tmp_path / "docs"
    make_corpus(docs, ["alpha"])
    (docs / "stuck.pdf").write_bytes((torture / "formats" / "stuck.pdf").read_bytes())
    with KnowledgeBase.open(tmp_path / "idx", max_file_seconds=1.0, **SETTINGS) as kb:
        runs = [kb.reindex(docs) for _ in range(3)]
        reasons = [{s.doc_id: s.reason for s in r.skipped}["docs:stuck.pdf"] for r in runs]
        assert "max_file_seconds=1" in reasons[0] and not reasons[1].endswith("parses it again)")
        assert reasons[2].endswith("parses it again)") and runs[2].timings["parse"] == 0.0
        (tmp_path / "idx" / "parse_failures").write_text("{not json")
        after_damage = kb.reindex(docs)
        assert [s.doc_id for s in after_damage.skipped] == ["docs:stuck.pdf"]  # parsed again, still skipped
        assert kb.search("zqalphav1s0", k=1, mode="bm25")[0].doc_id == "docs:alpha.md"


def test_remembered_failures_cost_one_conditions_check_per_reindex_not_one_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure memory's conditions (parse limits, parser versions) cost ~2 ms to build: computed per
    planned file they added 20 s to the plan of an unchanged 10k-document folder."""
    import kb.indexing.failures as failures_module

    built = []
    real = failures_module.conditions
    monkeypatch.setattr(failures_module, "conditions", lambda *a: built.append(1) or real(*a))
    docs = tmp_path / "docs"
    make_corpus(docs, [f"doc{i}" for i in range(40)])
    write(docs, "broken.pdf", b"%PDF-1.7\n" + b"\x00" * 64)
    with KnowledgeBase.open(tmp_path / "idx", **SETTINGS) as kb:
        kb.reindex(docs)
        write(docs, "doc0.md", doc("doc0", 2))
        for name in ("doc1", "doc2"):
            (docs / f"{name}.md").unlink()
        built.clear()
        report = kb.reindex(docs)
        assert [s.doc_id for s in report.skipped] == ["docs:broken.pdf"] and report.changed == ["docs:doc0.md"]
        assert len(built) <= 1
