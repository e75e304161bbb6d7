"""What a reader of a server collection sees: published write generations (the server backend's per-document
atomicity across processes, where the embedded engine has its in-process lock).

Each write batch of the server store (one :meth:`ServerChunkStore.transaction`) has a generation ``N``. The points
it upserts carry ``kb_gen = N``; the versions it replaces are not deleted but marked ``kb_dead = N`` (and
``kb_dead_at``, the time). Nothing of that is visible until the batch *publishes* ``N``: one state point
(``generation``) in the collection's state collection. A reader at published generation ``G`` sees a point when

    kb_gen <= G (or has none)   and   kb_gen not in aborted   and   not (kb_dead <= G and kb_dead not in aborted)

so every document of a batch switches from its old version to its new one at the same instant, for every replica:
never both, never neither. ``aborted`` lists batches that failed before publishing (their new points stay hidden,
their marks void) until a sweep settles them. Replaced points are deleted once ``qdrant_grace_seconds`` have passed,
so a replica that read ``G`` a moment before the switch still finds the old version it is entitled to.

Points without ``kb_gen`` (written by an older kb, or copied by ``kb migrate``) are visible to everyone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from qdrant_client import models

GEN, DEAD, DEAD_AT = "kb_gen", "kb_dead", "kb_dead_at"
STORE_FIELDS = (GEN, DEAD, DEAD_AT)  # kb's bookkeeping, not part of a chunk's payload
GENERATION_STATE = "generation"


@dataclass(frozen=True)
class View:
    """One consistent reading of the collection: which physical collection, at which published generation."""

    physical: str
    committed: int = 0
    aborted: tuple[int, ...] = ()
    read_at: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, physical: str, state: dict[str, Any] | None) -> View:
        state = state or {}
        aborted = tuple(sorted(int(g) for g in state.get("aborted", ())))
        return cls(physical, int(state.get("committed", 0)), aborted)

    def state(self) -> dict[str, Any]:
        return {"committed": self.committed, "aborted": list(self.aborted)}

    def at(self, committed: int, aborted: tuple[int, ...] | None = None) -> View:
        return replace(self, committed=committed, aborted=self.aborted if aborted is None else aborted,
                       read_at=time.monotonic())  # fmt: skip


def visible(view: View, conditions: models.Filter | None) -> models.Filter:
    """``conditions`` restricted to what a reader at ``view`` may see."""
    gen_known = models.FieldCondition(key=GEN, range=models.Range(lte=view.committed))
    no_gen = models.IsEmptyCondition(is_empty=models.PayloadField(key=GEN))
    dead: list[Any] = [models.FieldCondition(key=DEAD, range=models.Range(lte=view.committed))]
    must: list[Any] = [models.Filter(should=[no_gen, gen_known])]
    must_not: list[Any] = []
    if view.aborted:
        void = models.FieldCondition(key=DEAD, match=models.MatchAny(any=list(view.aborted)))
        must_not.append(models.FieldCondition(key=GEN, match=models.MatchAny(any=list(view.aborted))))
        must_not.append(models.Filter(must=dead, must_not=[void]))
    else:
        must_not.extend(dead)
    if conditions is not None:
        must.append(conditions)
    return models.Filter(must=must, must_not=must_not)


def not_dead() -> models.Filter:
    """Points no batch has marked replaced (what a sweep compares with the manifest)."""
    return models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key=DEAD))])


def unsettled(field_name: str, view: View) -> models.Filter:
    """Points whose ``field_name`` names a batch that is not (or not validly) published: after ``committed``,
    or aborted."""
    later = models.FieldCondition(key=field_name, range=models.Range(gt=view.committed))
    if not view.aborted:
        return models.Filter(must=[later])
    aborted = models.FieldCondition(key=field_name, match=models.MatchAny(any=list(view.aborted)))
    return models.Filter(should=[later, aborted])


def strip(payload: dict[str, Any]) -> dict[str, Any]:
    """A point's payload without kb's bookkeeping fields."""
    if not any(name in payload for name in STORE_FIELDS):
        return payload
    return {k: v for k, v in payload.items() if k not in STORE_FIELDS}
