"""kb's parts dropped into a LlamaIndex pipeline a user already has, on both store backends: the faces in
kb.llamaindex must behave as LlamaIndex's own components do, not only import."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import BasePydanticVectorStore

from kb import KnowledgeBase
from kb.acl import Principal
from kb.llamaindex import HeadingNodeParser
from kb.records import ChunkRecord
from tests.conftest import BACKENDS, write

SMALL = dict(chunk_max_tokens=64, chunk_min_tokens=8, llm_backend="extractive")


@pytest.fixture(params=list(BACKENDS))
def kb(request: pytest.FixtureRequest, tmp_path: Path):
    docs = tmp_path / "docs"
    write(docs, "failover.md", "# Failover\n\n## Promote\n\nRun zqpromote on the replica, then repoint the VIP.\n")
    write(docs, "backups.md", "# Backups\n\nNightly backups are kept for 35 days in the zqvault bucket.\n")
    with KnowledgeBase.open(tmp_path / "idx", **SMALL, **BACKENDS[request.param]) as opened:
        opened.ingest(docs, acl=["sre"])
        yield opened


def test_a_vector_store_index_over_kb_retrieves_what_kb_search_finds(kb: KnowledgeBase) -> None:
    assert isinstance(kb.vector_store, BasePydanticVectorStore) and isinstance(kb.embed_model, BaseEmbedding)
    index = VectorStoreIndex.from_vector_store(kb.vector_store, embed_model=kb.embed_model)
    nodes = index.as_retriever(similarity_top_k=1).retrieve("how long are backups kept?")
    best = kb.search("how long are backups kept?", k=1, mode="dense")[0]
    assert [n.node.metadata["doc_id"] for n in nodes] == [best.doc_id] == ["docs:backups.md"]
    assert nodes[0].score == pytest.approx(best.score, abs=1e-5)
    # The face embeds exactly as the index was embedded.
    assert kb.embed_model.get_query_embedding("zqpromote") == pytest.approx(kb.embedder.embed(["zqpromote"])[0])


def test_the_retriever_face_applies_filters_and_the_readers_acl(kb: KnowledgeBase) -> None:
    retriever = kb.retriever(k=3, mode="bm25")
    assert isinstance(retriever, BaseRetriever)
    assert retriever.retrieve("zqpromote")[0].node.metadata["header_path"] == ["Failover", "Promote"]
    filtered = kb.retriever(k=3, filters={"path": "backups.md"}).retrieve("zqpromote")
    assert [n.node.metadata["path"] for n in filtered] == ["backups.md"]
    assert [n.node.metadata["path"] for n in kb.retriever(k=1, user=Principal(["sre"])).retrieve("zqpromote")] == [
        "failover.md"
    ]
    assert kb.retriever(k=3, user=Principal(["dev"])).retrieve("zqpromote") == []  # the ACL is inside the legs


def test_nodes_from_the_node_parser_added_through_the_vector_store_keep_their_sections(kb: KnowledgeBase) -> None:
    parser = HeadingNodeParser(kb.chunker())
    text = "# Runbook\n\n## Drain\n\nDrain the zqdrain node first.\n"
    nodes = parser.get_nodes_from_documents([Document(text=text, doc_id="runbook", metadata={"team": "ops"})])
    vectors = kb.embed_model.get_text_embedding_batch([n.get_content() for n in nodes])
    for node, vector in zip(nodes, vectors, strict=True):
        node.embedding = vector
    kb.vector_store.add(nodes)
    hit = kb.search("zqdrain", k=1, mode="bm25", filters={"team": "ops"})[0]
    assert (hit.doc_id, hit.header_path) == ("nodes:runbook", "Runbook > Drain")
    kb.vector_store.delete("runbook")
    assert kb.search("zqdrain", k=1, mode="bm25", filters={"team": "ops"}) == []


def test_a_node_read_from_kb_and_added_back_never_replaces_the_chunk_nor_widens_its_acl(kb: KnowledgeBase) -> None:
    """A trusted caller reads a chunk of an sre-only document through the retriever and adds the node back
    through the vector store (a copy into another pipeline, say). The original chunk must stay where it was,
    under its own ACL, and the copy must keep the ACL the node carries: a dev must see neither."""
    node = kb.retriever(k=1, mode="bm25").retrieve("zqpromote")[0].node
    assert node.metadata["acl"] == ["sre"]
    node.embedding = kb.embedder.embed([node.get_content()])[0]
    kb.vector_store.add([node])
    dev, sre = Principal(["dev"]), Principal(["sre"])
    assert kb.search("zqpromote", k=5, mode="bm25", user=dev) == []
    found = {h.doc_id for h in kb.search("zqpromote", k=5, mode="bm25", user=sre)}
    assert found == {"docs:failover.md", "nodes:failover.md"}  # the original and the copy, both sre-only
    assert kb.status().damage == ""  # the manifest still matches the store: nothing was overwritten


def test_a_copy_of_a_chunk_stays_as_narrow_as_the_chunk_even_when_its_metadata_was_lost(kb: KnowledgeBase) -> None:
    """A pipeline step that rebuilds a node's metadata but keeps its id (the id is all that says it came from an
    sre-only chunk): the copy must not fall back to the index's default ACL."""
    node = kb.retriever(k=1, mode="bm25").retrieve("zqpromote")[0].node
    node.metadata = {}
    node.embedding = kb.embedder.embed([node.get_content()])[0]
    kb.vector_store.add([node])
    assert kb.search("zqpromote", k=5, mode="bm25", user=Principal(["dev"])) == []
    assert len(kb.search("zqpromote", k=5, mode="bm25", user=Principal(["sre"]))) == 2
    assert kb.status().damage == ""


def test_a_node_whose_id_is_another_added_documents_chunk_does_not_overwrite_it(kb: KnowledgeBase) -> None:
    first = Document(text="# Drain\n\nDrain the zqdrain node first.\n", doc_id="drain")
    second = Document(text="# Cordon\n\nCordon the zqcordon node.\n", doc_id="cordon")
    parser = HeadingNodeParser(kb.chunker())
    a, b = parser.get_nodes_from_documents([first]), parser.get_nodes_from_documents([second])
    b[0].id_ = a[0].node_id  # the same id from another document
    for node in (*a, *b):
        node.embedding = kb.embedder.embed([node.get_content()])[0]
    kb.vector_store.add(a)
    kb.vector_store.add(b)
    assert [h.doc_id for h in kb.search("zqdrain", k=1, mode="bm25")] == ["nodes:drain"]
    assert [h.doc_id for h in kb.search("zqcordon", k=1, mode="bm25")] == ["nodes:cordon"]
    assert kb.status().damage == ""


def test_a_nodes_own_acl_never_opens_a_chunk_the_default_keeps_to_trusted_callers() -> None:
    node = TextNode(text="zqsecret", id_="n1", metadata={"acl": ["__public__"]})
    assert ChunkRecord.from_foreign_node(node, "nodes", None)[1].acl is None  # None: trusted callers only
    assert ChunkRecord.from_foreign_node(node, "nodes", ["sre"])[1].acl == ["sre"]


def test_old_names_and_moved_methods_still_work_or_say_where_they_went(kb: KnowledgeBase) -> None:
    from kb.answering import CitedQueryEngine
    from kb.retrieval import HybridRetriever

    retriever = HybridRetriever(kb.store, kb.embedder, kb.settings, 1, mode="bm25")  # the old signature
    assert retriever.retrieve("zqpromote")[0].node.metadata["path"] == "failover.md"
    by_name = HybridRetriever(store=kb.store, embedder=kb.embedder, settings=kb.settings, similarity_top_k=1)
    assert by_name.retrieve("zqpromote")[0].node.metadata["path"] == "failover.md"
    assert CitedQueryEngine is type(kb.query_engine())
    with pytest.raises(AttributeError, match=r"kb\.embed_model"):
        kb.embedder.get_query_embedding("zqpromote")
    with pytest.raises(AttributeError, match="HeadingNodeParser"):
        kb.chunker().get_nodes_from_documents([])


def test_an_index_over_kb_store_itself_answers_async_retrieval_too(kb: KnowledgeBase) -> None:
    import asyncio

    index = VectorStoreIndex.from_vector_store(kb.store, embed_model=kb.embed_model)
    nodes = asyncio.run(index.as_retriever(similarity_top_k=1).aretrieve("how long are backups kept?"))
    assert [n.node.metadata["path"] for n in nodes] == ["backups.md"]


def test_the_node_parsers_caps_are_fields_so_an_ingestion_cache_tells_them_apart(kb: KnowledgeBase) -> None:
    from llama_index.core.ingestion import IngestionCache, IngestionPipeline

    text = "# Guide\n\n" + "\n\n".join(f"## Part {i}\n\n" + f"Some words about part {i}. " * 12 for i in range(6))
    cache = IngestionCache()
    counts = []
    for cap in (400, 64):
        parser = HeadingNodeParser(kb.chunker())
        parser.max_tokens, parser.min_tokens = cap, 8
        counts.append(len(IngestionPipeline(transformations=[parser], cache=cache).run(documents=[Document(text=text)])))
    assert counts[1] > counts[0]  # the second run was cut by its own cap, not served from the first's cache


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/etc/hosts > Format", ["/etc/hosts", "Format"]),  # kb's own form, a heading that starts with a slash
        (["/etc/hosts", "Format"], ["/etc/hosts", "Format"]),
        ("/Ops guide/", ["Ops guide", "Format"]),  # MarkdownNodeParser names the parents; its own heading is in the text
        (None, ["Format"]),
    ],
)
def test_a_foreign_nodes_header_path_is_read_in_the_form_it_was_written(given: object, expected: list[str]) -> None:
    from llama_index.core.schema import TextNode

    from kb.records import ChunkRecord

    node = TextNode(text="## Format\n\nOne host per line.", metadata={} if given is None else {"header_path": given})
    assert ChunkRecord.from_foreign_node(node, "nodes", None)[1].header_path == expected
