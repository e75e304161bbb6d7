"""Document access control on real indexes: the best match is forbidden and the user gets the best allowed one
(a full top-k), answers never cite or quote a forbidden document and refuse when only forbidden ones answer,
ACL-only changes apply on reindex without re-embedding, BM25 statistics do not reveal forbidden text, and a
property test over random ACLs and queries finds no forbidden chunk in any result, on both store backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb import ConfigError, KnowledgeBase, Principal
from kb.acl import PUBLIC, AclPolicy, normalize_groups
from kb.errors import SourceError
from tests.conftest import write

SMALL = dict(chunk_max_tokens=64, chunk_min_tokens=8, llm_backend="extractive")

SALARY = """# Salary bands 2026

Level 5 engineers are paid between 141,000 and 168,000 euros. The zqsalary bands are reviewed every April.
Level 6 engineers are paid between 170,000 and 199,000 euros.
"""
SEV1 = """---
acl: [sre]
---
# Incident 2291 postmortem

The ledger outage on March 3 lasted 47 minutes. Root cause: a zqledger certificate expired on the primary.
"""
PAY_FAQ = """# Pay FAQ

Salaries are paid on the 25th of each month. Payslips are in the HR portal.
"""
PLANTS = """# Office plants

Water the office plants every Tuesday. The ficus in room 4 needs indirect light.
"""


def corpus(root: Path) -> Path:
    docs = root / "docs"
    write(docs, "hr/salary-bands.md", SALARY)
    write(docs, "incidents/2291.md", SEV1)
    write(docs, "faq/pay.md", PAY_FAQ)
    write(docs, "office/plants.md", PLANTS)
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "hr/*"\ngroups = ["hr"]\n')
    return docs


@pytest.fixture
def acl_kb(tmp_path: Path, backend: dict):
    docs = corpus(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL, **backend) as kb:
        kb.reindex(docs)
        yield kb, docs


ENG, HR, SRE = Principal(groups=["eng"]), Principal(groups=["hr"]), Principal(groups=["sre"])


def test_the_best_match_is_forbidden_so_the_user_gets_the_best_allowed_one(acl_kb) -> None:
    kb, _ = acl_kb
    question = "What are the salary bands for level 5 engineers?"
    assert kb.search(question, k=1, user=HR)[0].doc_id == "docs:hr/salary-bands.md"  # the true best match
    hits = kb.search(question, k=3, user=ENG)
    assert hits and all(h.doc_id != "docs:hr/salary-bands.md" for h in hits)
    assert hits[0].doc_id == "docs:faq/pay.md"
    readable = kb.store.count({"acl": ENG.readable()})
    assert len(kb.search(question, k=50, user=ENG)) == readable  # a full top-k of what eng may read
    assert {h.doc_id for h in kb.search("zqledger certificate", k=5, mode="bm25", user=SRE)} == {"docs:incidents/2291.md"}
    assert kb.search("zqledger certificate", k=5, mode="bm25", user=ENG) == []
    assert {h.doc_id for h in kb.search("zqsalary", k=10)} >= {"docs:hr/salary-bands.md"}  # trusted caller: all


def test_answers_never_cite_or_quote_forbidden_documents_and_refuse_when_only_they_answer(acl_kb) -> None:
    kb, _ = acl_kb
    for_hr = kb.ask("What are the salary bands for level 5 engineers?", user=HR)
    assert not for_hr.refused and "141,000" in for_hr.text
    for_eng = kb.ask("What are the salary bands for level 5 engineers?", user=ENG)
    assert "141,000" not in for_eng.text and "168,000" not in for_eng.text
    assert all(c.doc_id != "docs:hr/salary-bands.md" for c in for_eng.citations)
    assert all(s.doc_id != "docs:hr/salary-bands.md" for s in for_eng.sources)
    outage = kb.ask("How long did the ledger outage on March 3 last and what was the root cause?", user=ENG)
    assert outage.refused and outage.refusal_reason == "no_relevant_sources" and "47" not in outage.text
    assert not kb.ask("How long did the ledger outage on March 3 last?", user=SRE).refused


def test_acl_only_change_applies_on_reindex_without_re_embedding(acl_kb) -> None:
    kb, docs = acl_kb
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "hr/*"\ngroups = ["hr", "eng"]\n')
    plan = kb.reindex(docs, dry_run=True)
    assert plan.acl_changed == ["docs:hr/salary-bands.md"] and kb.search("zqsalary", mode="bm25", user=ENG) == []
    report = kb.reindex(docs)
    assert report.acl_changed == ["docs:hr/salary-bands.md"] and report.chunks_written == 0 and not report.changed
    assert kb.search("zqsalary", k=1, mode="bm25", user=ENG)[0].doc_id == "docs:hr/salary-bands.md"
    assert kb.manifest.documents["docs:hr/salary-bands.md"].acl == ["eng", "hr"]
    (docs / "kb-acl.toml").unlink()  # a checkout without it is not a decision: refused, nothing opens
    with pytest.raises(SourceError, match="is gone"):
        kb.reindex(docs)
    (docs / "kb-acl.toml").write_text("# no rules: the default policy (public)\n")
    assert kb.reindex(docs).acl_changed == ["docs:hr/salary-bands.md"]
    assert kb.search("zqsalary", k=1, mode="bm25", user=Principal())[0].doc_id == "docs:hr/salary-bands.md"
    assert kb.reindex(docs).acl_changed == []  # stable


def test_an_acl_only_reindex_optimises_the_embedded_shard(tmp_path: Path) -> None:
    """Setting a payload copies the point out of its optimised segment into the appendable one, where it is not
    indexed, and the old copy stays until the shard is optimised. After an ACL change of a third of a
    100k-chunk index, hybrid queries took 8 ms instead of 3.3–4 until something optimised the shard (the next
    content change, if big enough; measured with scripts/bench_reindex.py). A few points never reach Qdrant's
    indexing threshold, so this test watches the real store's optimize being called (it still runs)."""
    docs = corpus(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", **SMALL) as kb:
        kb.reindex(docs)
        optimised = []
        run = kb.store.optimize
        kb.store.optimize = lambda: (optimised.append(True), run())[-1]  # type: ignore[method-assign]
        assert kb.reindex(docs).summary().endswith("4 unchanged") and optimised == []  # nothing to do: no cost
        write(docs, "kb-acl.toml", '[[rule]]\npattern = "*/*"\ngroups = ["hr", "eng"]\n')
        report = kb.reindex(docs)
        assert len(report.acl_changed) == 4 and report.chunks_written == 0
        assert optimised == [True]
        assert kb.search("zqsalary", k=1, mode="bm25", user=ENG)[0].doc_id == "docs:hr/salary-bands.md"


def test_ingest_call_acl_is_a_ceiling_and_deny_by_default_stops_self_publishing(tmp_path: Path) -> None:
    docs = corpus(tmp_path)
    with KnowledgeBase.open(tmp_path / "idx", acl_default="deny", **SMALL) as kb:
        kb.ingest(docs)
        assert kb.search("office plants ficus", k=5, user=ENG) == []  # no ACL + deny: nobody but '*'
        assert kb.search("office plants ficus", k=1, user=Principal(groups=["*"]))[0].doc_id == "docs:office/plants.md"
        # deny is the admin's policy: a document's own acl narrows it, it cannot open it up
        assert kb.search("zqledger", k=5, mode="bm25", user=SRE) == []
        kb.ingest(docs, acl=["facilities", "sre"])  # nothing changed in content: the source gets a ceiling
        assert kb.search("office plants ficus", k=1, user=Principal(groups=["facilities"]))[0].doc_id == (
            "docs:office/plants.md"
        )
        assert kb.search("zqledger", k=1, mode="bm25", user=SRE)[0].doc_id == "docs:incidents/2291.md"
        assert kb.search("zqledger", k=5, mode="bm25", user=Principal(groups=["facilities"])) == []  # narrowed


def test_malformed_acls_are_refused_without_touching_the_index(acl_kb) -> None:
    kb, docs = acl_kb
    before = kb.store.count()
    write(docs, "kb-acl.toml", "[[rule]]\npattern = 'x'\n")
    with pytest.raises(ConfigError, match=r"kb-acl.toml: rule 1 needs exactly"):
        kb.reindex(docs)
    write(docs, "kb-acl.toml", "[[rule]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        kb.reindex(docs)
    write(docs, "kb-acl.toml", '[[rule]]\npattern = "hr/*"\ngroups = ["hr"]\n')  # the rules it was built with
    write(docs, "bad.md", "---\nacl: {eng: true}\n---\n# Bad\n\nSecret zqbadacl text.\n")
    report = kb.reindex(docs)
    assert [(s.doc_id, "acl" in s.reason) for s in report.skipped] == [("docs:bad.md", True)]
    assert kb.search("zqbadacl", k=5, mode="bm25") == []  # never indexed as public by mistake
    assert kb.store.count() == before
    with pytest.raises(ConfigError, match="'\\*' is for principals"):
        normalize_groups(["*"], "acl")


def test_bm25_statistics_do_not_reveal_text_of_forbidden_documents(tmp_path: Path, backend: dict) -> None:
    docs = tmp_path / "docs"
    write(docs, "public.md", "# Public\n\nThe zqrare token appears here once, next to ordinary words.\n")
    write(docs, "secret.md", "---\nacl: [hr]\n---\n# Secret\n\nzqrare zqrare zqrare is in the secret too.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL, **backend) as kb:
        kb.reindex(docs)
        with_secret = kb.search("zqrare", k=1, mode="bm25", user=ENG)[0].score
        write(docs, "secret.md", "---\nacl: [hr]\n---\n# Secret\n\nNothing rare in the secret now.\n")
        kb.reindex(docs)
        without_secret = kb.search("zqrare", k=1, mode="bm25", user=ENG)[0].score
        assert with_secret == pytest.approx(without_secret)  # IDF over readable chunks only


GROUPS = ["eng", "sre", "hr", "legal"]
WORDS = ["ledger", "salary", "outage", "plants", "payslip", "certificate", "engineers", "light", "root cause"]


@pytest.fixture(scope="module", params=["edge", "qdrant-client"])
def property_kb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import BACKENDS

    root = tmp_path_factory.mktemp("acl-property")
    docs = root / "docs"
    texts = [SALARY, SEV1.split("---\n", 2)[2], PAY_FAQ, PLANTS]
    for i in range(12):
        write(docs, f"d{i:02d}.md", texts[i % 4].replace("# ", f"# Doc {i} ", 1))
    with KnowledgeBase.open(root / "idx", **SMALL, **BACKENDS[request.param]) as kb:
        kb.reindex(docs)
        yield kb


@given(
    acls=st.lists(st.lists(st.sampled_from([*GROUPS, PUBLIC]), max_size=3), min_size=12, max_size=12),
    groups=st.lists(st.sampled_from(GROUPS), max_size=3),
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
    mode=st.sampled_from(["hybrid", "dense", "bm25"]),
    k=st.integers(1, 40),
)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_forbidden_chunk_ever_reaches_a_result(property_kb, acls, groups, words, mode, k) -> None:
    kb = property_kb
    for i, acl in enumerate(acls):  # the ACL-only update path reindex uses
        kb.store.set_acl(f"docs:d{i:02d}.md", sorted(set(acl)))
    user = Principal(groups=groups)
    allowed = {f"docs:d{i:02d}.md" for i, acl in enumerate(acls) if set(acl) & {PUBLIC, *groups}}
    hits = kb.search(" ".join(words), k=k, mode=mode, user=user)
    assert {h.doc_id for h in hits} <= allowed
    if mode == "dense":  # the dense leg ranks every readable chunk: the top-k is full
        assert len(hits) == min(k, kb.store.count({"acl": sorted({PUBLIC, *groups})}))
    answer = kb.ask(" ".join(words) + "?", user=user)
    assert {c.doc_id for c in answer.citations} | {s.doc_id for s in answer.sources} <= allowed


def test_policy_is_a_ceiling_that_documents_narrow_but_never_widen() -> None:
    from kb.acl import AclDefault, AclRule

    policy = AclPolicy(AclDefault.DENY, [AclRule("*", ["staff"]), AclRule("hr/*", ["hr"])])
    assert policy.resolve("hr/a.md", None) == ["hr"]  # the last matching rule
    assert policy.resolve("eng/a.md", None) == ["staff"]
    assert policy.resolve("hr/a.md", [PUBLIC]) == ["hr"]  # a document cannot publish itself out of hr/
    assert policy.resolve("hr/a.md", ["eng"]) == []  # nor move itself to another group: nobody but '*'
    assert policy.resolve("eng/a.md", ["staff", "eng"]) == ["staff"]
    assert AclPolicy(AclDefault.DENY).resolve("x.md", None) == []
    assert AclPolicy(AclDefault.DENY).resolve("x.md", [PUBLIC]) == []  # deny is a policy too
    assert AclPolicy(AclDefault.PUBLIC).resolve("x.md", None) == [PUBLIC]
    assert AclPolicy(AclDefault.PUBLIC).resolve("x.md", ["eng"]) == ["eng"]  # narrowing is always allowed
    source_and_rules = AclPolicy(AclDefault.PUBLIC, [AclRule("hr/*", ["hr"])], ceiling=["staff", "hr"])
    assert source_and_rules.resolve("hr/a.md", None) == ["hr"]  # both layers allow hr
    assert source_and_rules.resolve("a.md", None) == ["hr", "staff"]
    assert AclPolicy(AclDefault.PUBLIC, ceiling=["ops"]).resolve("x.md", ["eng", "ops"]) == ["ops"]
    assert normalize_groups("eng, public", "acl") == [PUBLIC]  # public already includes eng
