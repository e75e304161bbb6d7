"""Fusion in kb (convex combination of normalised leg scores, exact-token weights, page context, exact match) as plain
functions, and through both real store backends: the same query plan, the same order on the embedded engine
and on qdrant-client, and the ACL applied inside both legs so a forbidden chunk never enters the fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kb import KnowledgeBase, Principal
from kb.fusion import (
    MAX_NAMED_TOKENS,
    Normalization,
    contains_token,
    convex,
    exact_tokens,
    fold,
    named_tokens,
    normalise,
    query_weights,
    rrf,
    with_exact_match,
    with_page_context,
)
from kb.settings import FusionMethod
from kb.store.base import ChunkStore, HybridQuery
from kb.store.plan import BM25, DENSE, compile_plan
from tests.conftest import write


def test_convex_keeps_score_gaps_that_rank_fusion_throws_away() -> None:
    # Dense is confident about "a" (0.71 vs 0.52); BM25 ranks "b" first by a hair. RRF only sees ranks and
    # calls it a tie broken by weights; the convex combination sees that "a" is far ahead in dense.
    dense = [("a", 0.71), ("b", 0.52), ("c", 0.50)]
    bm25 = [("b", 9.1), ("a", 9.0), ("c", 2.0)]
    fused = convex({"dense": dense, "bm25": bm25}, {"dense": 0.5, "bm25": 0.5}, Normalization.MINMAX)
    assert [p for p, _ in fused] == ["a", "b", "c"]
    tied = rrf({"dense": dense, "bm25": bm25}, {"dense": 1.0, "bm25": 1.0}, 10)
    assert tied[0][1] == pytest.approx(tied[1][1])  # RRF cannot tell them apart


def test_a_candidate_one_leg_missed_gets_that_legs_floor_not_a_bonus() -> None:
    dense = [("a", 0.9), ("b", 0.5)]
    bm25 = [("c", 5.0), ("b", 1.0)]
    fused = dict(convex({"dense": dense, "bm25": bm25}, {"dense": 0.6, "bm25": 0.4}, Normalization.MINMAX))
    assert fused["a"] == pytest.approx(0.6 * 1.0 + 0.4 * 0.0)
    assert fused["c"] == pytest.approx(0.6 * 0.0 + 0.4 * 1.0)
    assert fused["b"] == pytest.approx(0.0)  # last in both


@pytest.mark.parametrize("method", list(Normalization))
def test_normalisations_are_monotone_and_bounded(method: Normalization) -> None:
    scores = np.array([3.0, 1.0, 2.5, -1.0, 0.0])
    scaled = normalise(scores, method)
    assert list(np.argsort(-scaled, kind="stable")) == list(np.argsort(-scores, kind="stable"))
    if method is not Normalization.ZSCORE:
        assert scaled.min() >= 0.0 and scaled.max() <= 1.0
    assert np.all(np.isfinite(normalise(np.array([2.0, 2.0]), method)))  # one distinct score: no division by 0


@pytest.mark.parametrize(
    "query,tokens",
    [
        ("What is max_wal_senders?", ["max_wal_senders"]),
        ("what does E4012 mean", ["E4012"]),
        ("how do I use --no-cache", ["--no-cache"]),
        ("default of billing.retry_limit", ["billing.retry_limit"]),
        ('the phrase "could not serialize access"', ['"could not serialize access"']),
        ("std::vec::Vec capacity", ["std::vec::Vec"]),
        ("SQLSTATE 40P01 deadlock", ["40P01"]),
    ],
)
def test_exact_tokens_are_recognised(query: str, tokens: list[str]) -> None:
    assert exact_tokens(query) == tokens


@pytest.mark.parametrize(
    "query", ["How do I roll back a bad deployment?", "Why is Python slow?", "What is a lambda? Can I nest them?"]
)
def test_natural_language_has_no_exact_tokens_so_weights_stay(query: str) -> None:
    assert exact_tokens(query) == []
    assert query_weights(query, 0.7, 0.3, 3.0) == pytest.approx({"dense": 0.7, "bm25": 0.3})


def test_an_exact_token_shifts_weight_to_bm25() -> None:
    weights = query_weights("max_wal_senders default", 0.7, 0.3, 3.0)
    assert weights["bm25"] == pytest.approx(0.9 / 1.6) and sum(weights.values()) == pytest.approx(1.0)


def test_page_context_lifts_a_chunk_of_a_strong_page_and_zero_changes_nothing() -> None:
    fused = [("x1", 0.80), ("y1", 0.62), ("y2", 0.61), ("y3", 0.60), ("x2", 0.10)]
    page = {"x1": "x", "x2": "x", "y1": "y", "y2": "y", "y3": "y"}
    assert with_page_context(fused, page.__getitem__, 0.0) == fused
    mixed = with_page_context(fused, page.__getitem__, 0.6)
    assert mixed[0][0] == "y1"  # page y is on topic throughout; page x has one good chunk
    assert {p for p, _ in mixed} == set(page)


def test_exact_match_lifts_the_chunk_that_names_the_token_and_nothing_else_moves() -> None:
    fused = [("prose1", 0.62), ("prose2", 0.60), ("ref", 0.41), ("other", 0.30)]
    text = {
        "prose1": "what happens when you change the bonjour name",
        "prose2": "bonjour_name_suffix is another key",  # a longer word that merely starts with the token
        "ref": "port (integer) ... Bonjour_Name (string): the service name",
        "other": "nothing relevant",
    }
    tokens = named_tokens('What happens when I change "bonjour_name"?')
    assert tokens == ["bonjour_name"]
    lifted = with_exact_match(fused, text.__getitem__, tokens, 0.5)
    assert [p for p, _ in lifted] == ["ref", "prose1", "prose2", "other"]
    assert with_exact_match(fused, text.__getitem__, tokens, 0.0) == fused
    assert with_exact_match(fused, text.__getitem__, named_tokens("what happens when I rename it"), 0.5) == fused


@pytest.mark.parametrize(
    ("text", "token", "found"),
    [
        ("set max_wal_senders to 10", "max_wal_senders", True),
        ("max_wal_senders_timeout only", "max_wal_senders", False),
        ("see sqlstate hv091.", "hv091", True),
        ("code hv0912", "hv091", False),
        ("run with --dry-run first", "--dry-run", True),
        ("xmax_wal_senders", "max_wal_senders", False),
        ("ends with max_wal_senders", "max_wal_senders", True),
        ("use --dry-run-all instead", "--dry-run", False),  # a longer flag
        ("call sys.stdout.close()", "sys.stdout", True),  # an attribute of sys.stdout names it
        ("the pre-max_wal_senders era", "max_wal_senders", False),  # hyphenated into another word
        ("see os.path.", "os.path", True),  # a sentence's full stop is not a joiner
        ("the max wal\nsenders limit", "max wal senders", True),  # a quoted phrase across a line break
        ("CAF\u0065\u0301_X is set", "caf\u00e9_x", True),  # decomposed and upper case in the document
    ],
)
def test_a_token_is_contained_only_as_a_whole_name(text: str, token: str, found: bool) -> None:
    assert contains_token(fold(text), token) is found


@pytest.mark.parametrize(
    ("query", "tokens"),
    [
        ('What is "bonjour_name?"', ["bonjour_name"]),  # the question mark inside the quotes is not the key's
        ('"set bonjour_name" fails', ["set bonjour_name", "bonjour_name"]),  # the phrase and the key inside it
        ("What does --dry-run do with os.path and E4012?", ["--dry-run", "os.path", "e4012"]),
        ("run it with -v", []),  # too short to match safely; BM25's boost still applies
    ],
)
def test_named_tokens_are_what_a_chunk_would_contain(query: str, tokens: list[str]) -> None:
    assert named_tokens(query) == tokens


def test_a_query_naming_hundreds_of_tokens_checks_a_bounded_number() -> None:
    pasted_log = " ".join(f"worker_{n}_failed" for n in range(500))
    assert len(named_tokens(pasted_log)) == MAX_NAMED_TOKENS


def test_the_plan_drops_a_leg_without_a_query_vector_and_fuses_in_store_only_for_qdrant_fusions() -> None:
    from kb.settings import RetrievalMode
    from kb.sparse import SparseVector

    sparse = SparseVector(indices=[1], values=[1.0])
    both = HybridQuery(limit=5, dense=[0.1] * 4, sparse=sparse, fusion=FusionMethod.RRF, readable=["eng"])
    plan = compile_plan(both)
    assert [leg.name for leg in plan.legs] == [DENSE, BM25] and plan.fused_in_store
    assert plan.where["acl"] == ["eng"] and plan.legs[1].idf_corpus == {"acl": ["eng"]}
    assert not compile_plan(
        HybridQuery(limit=5, dense=[0.1] * 4, sparse=sparse, fusion=FusionMethod.CONVEX)
    ).fused_in_store
    empty = HybridQuery(limit=5, dense=[0.1] * 4, sparse=SparseVector(indices=[], values=[]), mode=RetrievalMode.HYBRID)
    only = compile_plan(empty)
    assert [leg.name for leg in only.legs] == [DENSE] and only.legs[0].limit == 5  # stop-words only: dense alone


DOCS = {
    "ops/wal.md": "# WAL settings\n\n## max_wal_senders\n\nmax_wal_senders sets how many standby servers may stream "
    "the write-ahead log at once. The default is 10.\n\n## wal_keep_size\n\nwal_keep_size keeps old WAL segments "
    "so a slow standby can catch up.\n",
    "ops/replication.md": "# Replication\n\nStandby servers stream the write-ahead log from the primary. Tune the "
    "number of senders when you add replicas.\n",
    "secret/plan.md": "---\nacl: [exec]\n---\n# Replication plan 2027\n\nWe will add zqreplica standby servers "
    "streaming the write-ahead log from three regions.\n",
}


@pytest.fixture
def convex_kb(tmp_path: Path, backend: dict):
    docs = tmp_path / "docs"
    for rel, text in DOCS.items():
        write(docs, rel, text)
    with KnowledgeBase.open(
        tmp_path / "idx", fusion="convex", exact_token_boost=3.0, context_weight=0.2, chunk_max_tokens=48, **backend
    ) as kb:
        kb.reindex(docs)
        yield kb


def test_convex_fusion_on_a_real_store_ranks_the_exact_key_first_and_keeps_the_acl(convex_kb: KnowledgeBase) -> None:
    hits = convex_kb.search("what is max_wal_senders", k=3)
    assert "max_wal_senders sets" in hits[0].text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    question = "standby servers streaming the write-ahead log from regions"
    assert convex_kb.search(question, k=1, user=Principal(groups=["exec"]))[0].doc_id == "docs:secret/plan.md"
    for user in (Principal(groups=["eng"]), Principal()):
        hits = convex_kb.search(question, k=10, user=user)
        assert hits and all(h.doc_id != "docs:secret/plan.md" for h in hits)
        assert convex_kb.search("zqreplica", k=10, user=user, mode="bm25") == []


def test_both_backends_send_the_same_plan_and_rank_the_same(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    for rel, text in DOCS.items():
        write(docs, rel, text)
    orders = []
    for name, extra in (("edge", {}), ("client", {"qdrant_url": "local"})):
        with KnowledgeBase.open(tmp_path / name, fusion="convex", chunk_max_tokens=48, **extra) as kb:
            kb.reindex(docs)
            orders.append([(h.node_id, round(h.score, 5)) for h in kb.search("how many standby servers", k=6)])
    assert orders[0] == orders[1] and len(orders[0]) >= 3


def test_a_parameter_named_in_the_query_ranks_first_though_the_dense_leg_prefers_prose(
    tmp_path: Path, backend: dict
) -> None:
    """Regression (issue 14, postgres-exact tune split: bonjour_name at fused rank 8, BM25 rank 1). The one chunk
    naming the parameter packs eight of them; twelve prose pages about changing Bonjour names are what the
    question's words mean. BM25 ranks the reference first (``bonjourname`` is rare), the dense leg 13th, and
    the fused ranking of the old default (BM25 weight unchanged, no exact-match bonus) left it out of the top 5
    even for the bare token."""
    docs = tmp_path / "docs"
    write(docs, "reference/connections.md", "# Server reference\n\n## Network\n\n" + " ".join(
        f"{key} ({kind}): {what}." for key, kind, what in [
            ("listen_addresses", "string", "the TCP/IP addresses on which the server listens for clients"),
            ("port", "integer", "the TCP port the server listens on, 5432 by default"),
            ("unix_socket_directories", "string", "the directories of the Unix-domain sockets"),
            ("unix_socket_group", "string", "the owning group of the sockets"),
            ("bonjour_name", "string", "the Bonjour service name; empty means the computer name"),
            ("tcp_keepalives_idle", "integer", "seconds of inactivity after which TCP sends a keepalive"),
            ("tcp_keepalives_interval", "integer", "seconds between keepalives"),
            ("tcp_user_timeout", "integer", "milliseconds transmitted data may remain unacknowledged"),
        ]))  # fmt: skip
    for thing in ("printer", "laptop", "file server", "media player", "camera", "scanner", "speaker", "tablet",
                  "router", "phone", "television", "workstation"):  # fmt: skip
        write(docs, f"guide-{thing.replace(' ', '-')}.md", f"# Renaming a {thing}\n\nWhat happens when you "
              f"change the Bonjour name of a {thing}: other devices on the network see the {thing} under its new "
              f"Bonjour name after a few seconds, and saved connections to the old name stop working until you "
              "change them too.\n")  # fmt: skip
    with KnowledgeBase.open(tmp_path / "idx", exact_token_boost=1.0, exact_match_bonus=0.0, **backend) as kb:
        kb.reindex(docs)
        assert kb.search("bonjour_name", k=1)[0].path != "reference/connections.md"  # the bug, reproduced
    with KnowledgeBase.open(tmp_path / "idx", exact_token_boost=1.0, **backend) as kb:
        assert kb.search("bonjour_name", k=1)[0].path == "reference/connections.md"  # the bonus alone fixes it
    with KnowledgeBase.open(tmp_path / "idx", **backend) as kb:
        assert kb.search("bonjour_name", k=1, mode="bm25")[0].path == "reference/connections.md"
        dense = [h.path for h in kb.search("What happens when I change bonjour_name?", k=20, mode="dense")]
        assert dense.index("reference/connections.md") >= 5  # the dense leg alone would not show it
        for question in ("What happens when I change bonjour_name?", "How do I use bonjour_name?", "bonjour_name"):
            assert kb.search(question, k=1)[0].path == "reference/connections.md", question
        # Prose questions that name no token rank as before: the bonus is not a bias towards reference pages.
        assert kb.search("what happens when I rename my printer?", k=1)[0].path == "guide-printer.md"


def test_on_the_embedded_engine_no_write_lands_between_a_querys_legs_and_its_payload_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded engine reads both legs and then the payloads by id, without filtering again: that is right
    only because the store's write lock is held from the legs to the last read. A writer (another thread, as a
    reindex is) asking for the store then is refused, checked from inside the payload read itself."""
    import threading

    docs = tmp_path / "docs"
    for rel, text in DOCS.items():
        write(docs, rel, text)
    with KnowledgeBase.open(tmp_path / "idx", fusion="convex", chunk_max_tokens=48) as kb:
        kb.reindex(docs)
        store = kb.store
        read = type(store)._payloads_by_id
        writer_could_enter: list[bool] = []

        def probe(self: ChunkStore, ids: list[str], fields: list[str] | None) -> dict:
            def writer() -> None:
                lock = self.transaction()
                entered = lock.acquire(blocking=False)
                writer_could_enter.append(entered)
                if entered:
                    lock.release()

            thread = threading.Thread(target=writer)
            thread.start()
            thread.join()
            return read(self, ids, fields)

        monkeypatch.setattr(type(store), "_payloads_by_id", probe)
        assert kb.search("what is max_wal_senders", k=1)[0].doc_id == "docs:ops/wal.md"
        assert writer_could_enter and not any(writer_could_enter)


def test_a_chunk_whose_acl_is_narrowed_while_the_query_runs_is_not_returned(
    convex_kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Convex fusion reads ids and scores from both legs, then fetches the payloads of what it keeps. On a
    server (replicas, no lock across the reads) an ACL narrowed in between (a reindex of kb-acl.toml running
    meanwhile) must still hold: the fetch applies the caller's ACL again inside the store. The hook runs the
    real ``set_acl`` at that moment. (The embedded engine lets no write in between: see the test above.)"""
    if not convex_kb.settings.qdrant_url:
        pytest.skip("the embedded engine holds its lock from the legs to the payload reads")
    store = convex_kb.store
    fetch = type(store)._payloads

    def acl_narrowed_first(self: ChunkStore, ids: list[str], where: dict, fields: list[str] | None) -> dict:
        self.set_acl("docs:ops/wal.md", ["exec"])
        return fetch(self, ids, where, fields)

    engineer = Principal(groups=["eng"])
    assert convex_kb.search("what is max_wal_senders", k=1, user=engineer)[0].doc_id == "docs:ops/wal.md"
    monkeypatch.setattr(type(store), "_payloads", acl_narrowed_first)
    hits = convex_kb.search("what is max_wal_senders", k=1, user=engineer)
    assert [h.doc_id for h in hits] == ["docs:ops/replication.md"]  # a full k of what the engineer may read
    monkeypatch.undo()
    executive = convex_kb.search("what is max_wal_senders", k=1, user=Principal(groups=["exec"]))
    assert executive[0].doc_id == "docs:ops/wal.md"  # the change itself took effect: exec still reads it


def test_a_reindex_published_while_the_query_runs_shows_the_new_version_not_nothing(
    tmp_path: Path, backend: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The legs ran on the old version of ops/wal.md; a reindex (``reindex_in_background`` on another thread)
    publishes the new one before the payloads are fetched. The answer must be one of the versions, never
    neither: the query runs again with the payloads its legs read. The hook runs the real reindex then.
    (Server backend: the embedded engine lets no write in between.)"""
    if not backend.get("qdrant_url"):
        pytest.skip("the embedded engine holds its lock from the legs to the payload reads")
    docs = tmp_path / "docs"
    for rel, text in DOCS.items():
        write(docs, rel, text)
    edited = DOCS["ops/wal.md"].replace("The default is 10.", "The default is 12.")
    with KnowledgeBase.open(tmp_path / "idx", fusion="convex", chunk_max_tokens=48, **backend) as kb:
        kb.reindex(docs)
        store = kb.store
        fetch = type(store)._payloads
        published: list[bool] = []

        def reindex_meanwhile(self: ChunkStore, ids: list[str], where: dict, fields: list[str] | None) -> dict:
            if not published:
                published.append(True)
                write(docs, "ops/wal.md", edited)
                kb.reindex(docs)
            return fetch(self, ids, where, fields)

        monkeypatch.setattr(type(store), "_payloads", reindex_meanwhile)
        hits = kb.search("what is max_wal_senders", k=3)
        assert published and hits[0].doc_id == "docs:ops/wal.md"
        assert "The default is 12." in hits[0].text or "max_wal_senders sets" in hits[0].text
        assert len(hits) == 3


def test_the_payload_fetch_returns_exactly_the_ids_asked_and_only_readable_ones(convex_kb: KnowledgeBase) -> None:
    store = convex_kb.store
    hits = convex_kb.search("standby servers write-ahead log", k=10)
    asked = [h.node_id for h in hits if h.doc_id != "docs:secret/plan.md"][:2]
    assert len(asked) == 2
    assert set(store._payloads(asked, {}, ["doc_id"])) == set(asked)
    secret = [h.node_id for h in convex_kb.search("zqreplica", k=10, mode="bm25")]
    assert secret  # the trusted caller finds the executive plan
    public_only = {"acl": Principal(groups=["eng"]).readable()}
    assert store._payloads(secret + asked, public_only, None).keys() == set(asked)
