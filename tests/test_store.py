"""The chunk store on both backends (the embedded engine, and qdrant-client's local mode standing in for a
server: see ``BACKENDS`` in conftest): upsert, delete by document, filters on both legs, state documents,
full-rebuild staging and promotion, reopen from disk, the LlamaIndex vector-store interface; and the
embedded engine's single-process lock."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from kb.errors import ConfigError, IndexLockedError
from kb.settings import FusionMethod, RetrievalMode, Settings
from kb.sparse import Bm25Encoder
from kb.store import open_store
from kb.store.base import ChunkStore, HybridQuery, StoredPoint
from kb.store.edge import EdgeChunkStore

BM25 = Bm25Encoder()


def point(pid: int, doc: str, text: str, vector: list[float], **meta) -> StoredPoint:
    payload = {"doc_id": doc, "text": text, "title": doc, "header_path": [], "meta": meta}
    return StoredPoint(f"00000000-0000-0000-0000-{pid:012d}", vector, BM25.embed_document(text), payload)


def make_store(folder: Path, backend: dict) -> ChunkStore:
    return open_store(folder, Settings(**backend), 3, BM25)


@pytest.fixture
def store(tmp_path: Path, backend: dict):
    s = make_store(tmp_path, backend)
    s.ensure_payload_indexes(["product"])
    s.upsert(
        [
            point(1, "a.md", "rotate the api key with lumen keys roll", [1, 0, 0], product="api"),
            point(2, "a.md", "error E4012 means the issuer declined", [0, 1, 0], product="billing"),
            point(3, "b.md", "database failover with patronictl", [0, 0, 1], product="ledger"),
            point(4, "c.md", "billing retries and E4012 declines", [0, 0.9, 0.1], product="billing", tags=["x", "y"]),
        ]
    )
    yield s
    s.close()


def ids(hits) -> list[str]:
    return [h.payload["text"].split()[0] for h in hits]


def test_each_mode_ranks_by_its_own_leg(store: ChunkStore) -> None:
    dense = store.search(HybridQuery(limit=2, dense=[1, 0, 0], mode=RetrievalMode.DENSE))
    assert ids(dense)[0] == "rotate"
    bm25 = store.search(HybridQuery(limit=2, sparse=BM25.embed_query("patronictl"), mode=RetrievalMode.BM25))
    assert ids(bm25) == ["database"]
    fused = store.search(
        HybridQuery(limit=4, dense=[1, 0, 0], sparse=BM25.embed_query("patronictl"), fusion=FusionMethod.RRF)
    )
    assert set(ids(fused)[:2]) == {"rotate", "database"}  # each leg's winner reaches the top


def test_filters_apply_to_both_legs_before_the_limit(store: ChunkStore) -> None:
    plan = HybridQuery(
        limit=2,
        dense=[1, 0, 0],  # the best dense match (api) is excluded by the filter
        sparse=BM25.embed_query("rotate api key"),  # so is the best lexical one
        conditions={"meta.product": ["billing"]},
    )
    hits = store.search(plan)
    assert len(hits) == 2 and all(h.payload["meta"]["product"] == "billing" for h in hits)
    any_of = store.search(HybridQuery(limit=5, dense=[1, 0, 0], conditions={"meta.product": ["api", "ledger"]}))
    assert sorted(ids(any_of)) == ["database", "rotate"]
    by_tag = store.search(HybridQuery(limit=5, dense=[0, 1, 0], conditions={"meta.tags": ["y"]}))
    assert ids(by_tag) == ["billing"]


def test_delete_by_document_removes_from_both_legs(store: ChunkStore) -> None:
    store.delete_documents(["a.md"])
    assert store.count() == 2
    assert store.count({"doc_id": ["a.md"]}) == 0
    lexical = store.search(HybridQuery(limit=5, sparse=BM25.embed_query("E4012"), mode=RetrievalMode.BM25))
    assert [h.payload["doc_id"] for h in lexical] == ["c.md"]
    dense = store.search(HybridQuery(limit=5, dense=[1, 0, 0], mode=RetrievalMode.DENSE))
    assert "a.md" not in {h.payload["doc_id"] for h in dense}


def test_reopen_from_disk_keeps_points_state_and_indexes(tmp_path: Path, backend: dict) -> None:
    first = make_store(tmp_path / "s", backend)
    first.upsert([point(1, "a.md", "hello world", [1, 0, 0])])
    first.write_state("manifest.json", {"documents": {"a.md": 1}})
    first.optimize()
    first.close()
    again = make_store(tmp_path / "s", backend)
    assert again.count() == 1
    assert [h.payload["doc_id"] for h in again.scroll()] == ["a.md"]
    assert again.read_state("manifest.json") == {"documents": {"a.md": 1}} and again.read_state("other") is None
    again.close()


def test_full_rebuild_staging_is_invisible_until_promoted(store: ChunkStore) -> None:
    store.write_state("index.json", {"version": 1})
    staging = store.staging(3, BM25)
    staging.upsert([point(9, "new.md", "brand new content", [1, 0, 0])])
    staging.write_state("index.json", {"version": 2})
    assert store.count() == 4 and store.count({"doc_id": ["new.md"]}) == 0  # readers still see the old one
    with store.transaction():
        store.promote(staging)
    assert store.count() == 1 and store.read_state("index.json") == {"version": 2}
    hits = store.search(HybridQuery(limit=3, dense=[1, 0, 0], sparse=BM25.embed_query("brand new")))
    assert [h.payload["doc_id"] for h in hits] == ["new.md"]
    discarded = store.staging(3, BM25)
    discarded.upsert([point(10, "gone.md", "never promoted", [0, 1, 0])])
    store.discard(discarded)
    assert store.count() == 1 and store.count({"doc_id": ["gone.md"]}) == 0


def test_second_open_of_the_same_index_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    store = EdgeChunkStore(tmp_path / "shard", 3, BM25)
    with pytest.raises(IndexLockedError, match="open in another process"):
        EdgeChunkStore(store.path, 3, BM25)
    store.close()


def test_llamaindex_vector_store_interface(tmp_path: Path, backend: dict) -> None:
    s = make_store(tmp_path / "li", backend)
    node = TextNode(id_="00000000-0000-0000-0000-000000000009", text="webhook signatures use HMAC", embedding=[0, 0, 1])
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id="w.md")
    node.metadata = {"doc_id": "w.md", "meta": {"product": "gateway"}}
    assert s.add([node]) == [node.node_id]
    result = s.query(
        VectorStoreQuery(
            query_embedding=[0, 0, 1],
            query_str="HMAC",
            similarity_top_k=3,
            mode=VectorStoreQueryMode.HYBRID,
            filters=MetadataFilters(filters=[MetadataFilter(key="product", value="gateway")]),
        )
    )
    assert result.ids == [node.node_id] and result.nodes[0].get_content() == "webhook signatures use HMAC"
    with pytest.raises(ConfigError, match="only equality"):
        s.query(
            VectorStoreQuery(
                query_embedding=[0, 0, 1],
                filters=MetadataFilters(filters=[MetadataFilter(key="n", value=1, operator=FilterOperator.GT)]),
            )
        )
    s.delete("w.md")
    assert s.count() == 0
    s.close()
