"""The chunk store on the real embedded Qdrant engine: upsert, delete by document, filters on both legs,
reopen from disk, the single-process lock, and the LlamaIndex vector-store interface."""

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
from kb.settings import FusionMethod, RetrievalMode
from kb.sparse import Bm25Encoder
from kb.store.base import HybridQuery, StoredPoint
from kb.store.edge import EdgeChunkStore

BM25 = Bm25Encoder()


def point(pid: int, doc: str, text: str, vector: list[float], **meta) -> StoredPoint:
    payload = {"doc_id": doc, "text": text, "title": doc, "header_path": [], "meta": meta}
    return StoredPoint(f"00000000-0000-0000-0000-{pid:012d}", vector, BM25.embed_document(text), payload)


@pytest.fixture
def store(tmp_path: Path):
    s = EdgeChunkStore(tmp_path / "shard", 3, BM25)
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


def test_each_mode_ranks_by_its_own_leg(store: EdgeChunkStore) -> None:
    dense = store.search(HybridQuery(limit=2, dense=[1, 0, 0], mode=RetrievalMode.DENSE))
    assert ids(dense)[0] == "rotate"
    bm25 = store.search(HybridQuery(limit=2, sparse=BM25.embed_query("patronictl"), mode=RetrievalMode.BM25))
    assert ids(bm25) == ["database"]
    fused = store.search(
        HybridQuery(limit=4, dense=[1, 0, 0], sparse=BM25.embed_query("patronictl"), fusion=FusionMethod.RRF)
    )
    assert set(ids(fused)[:2]) == {"rotate", "database"}  # each leg's winner reaches the top


def test_filters_apply_to_both_legs_before_the_limit(store: EdgeChunkStore) -> None:
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


def test_delete_by_document_removes_from_both_legs(store: EdgeChunkStore) -> None:
    store.delete_documents(["a.md"])
    assert store.count() == 2
    assert store.count({"doc_id": ["a.md"]}) == 0
    lexical = store.search(HybridQuery(limit=5, sparse=BM25.embed_query("E4012"), mode=RetrievalMode.BM25))
    assert [h.payload["doc_id"] for h in lexical] == ["c.md"]
    dense = store.search(HybridQuery(limit=5, dense=[1, 0, 0], mode=RetrievalMode.DENSE))
    assert "a.md" not in {h.payload["doc_id"] for h in dense}


def test_reopen_from_disk_keeps_points_and_indexes(tmp_path: Path) -> None:
    first = EdgeChunkStore(tmp_path / "s", 3, BM25)
    first.upsert([point(1, "a.md", "hello world", [1, 0, 0])])
    first.optimize()
    first.close()
    again = EdgeChunkStore(tmp_path / "s", 3, BM25)
    assert again.count() == 1
    assert [h.payload["doc_id"] for h in again.scroll()] == ["a.md"]
    again.close()


def test_second_open_of_the_same_index_is_refused_with_a_clear_error(store: EdgeChunkStore) -> None:
    with pytest.raises(IndexLockedError, match="open in another process"):
        EdgeChunkStore(store.path, 3, BM25)


def test_llamaindex_vector_store_interface(tmp_path: Path) -> None:
    s = EdgeChunkStore(tmp_path / "li", 3, BM25)
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
