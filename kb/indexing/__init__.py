"""Indexing: plan a source's changes, apply them in the journal's durable order, recover after a crash.

    plan = plan_source(source, manifest, settings, sync=True)   # kb.indexing.plan: nothing is written
    report = Indexer(store, embedder, counter, manifest, journal, settings).apply(plan)

Stages, one module each: ``plan`` (what changes), ``workers`` (parse and chunk in processes, each file
within its time limit), ``indexer`` (embed and write), ``journal`` (write order, crash sweep, damage check),
``report`` (what was done).
"""

from kb.indexing.indexer import EMBED_FLUSH_CHUNKS, Indexer, text_hash
from kb.indexing.journal import DIRTY, Damage, Journal, check_store, sweep
from kb.indexing.plan import IndexPlan, plan_source
from kb.indexing.report import IngestReport, Progress

__all__ = [
    "DIRTY",
    "EMBED_FLUSH_CHUNKS",
    "Damage",
    "IndexPlan",
    "Indexer",
    "IngestReport",
    "Journal",
    "Progress",
    "check_store",
    "plan_source",
    "sweep",
    "text_hash",
]
