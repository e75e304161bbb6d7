"""BM25 sparse vectors (Qdrant computes the IDF), keeping the exact tokens users search for.

    >>> from kb.sparse import Bm25Encoder
    >>> encoder = Bm25Encoder()
    >>> vector = encoder.embed_query("what does E4012 mean for billing.retry_limit?")
    >>> len(vector.indices) > 0
    True

Qdrant's word tokenizer splits ``billing.retry_limit`` into ``billing``/``retry``/``limit`` and
``--dry-run`` into ``dry``/``run``, which makes those exact names no more findable than the prose words.
Each compound token is therefore also indexed fused (``billingretrylimit``, ``dryrun``): a rare term, so
a query that names it exactly ranks the chunks that contain it first, while the parts still match prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qdrant_edge import Bm25, Bm25Config

# Words joined by . _ - / : (config keys, dotted names, flags, paths, versions). Codes such as E4012 are
# already single tokens for Qdrant's tokenizer. Matches start only where a run begins and never backtrack
# into a run (possessive ++): the plain pattern was quadratic on long words (a 100 KB token took 116 s).
_COMPOUND = re.compile(r"(?<![A-Za-z0-9-])(?:--?)?[A-Za-z0-9]++(?:[._\-/:][A-Za-z0-9]++)+")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


def exact_terms(text: str) -> list[str]:
    """Fused forms of the compound tokens in ``text`` (``billing.retry_limit`` → ``billingretrylimit``)."""
    return [_NON_ALNUM.sub("", m.group(0)).lower() for m in _COMPOUND.finditer(text)]


class Bm25Encoder:
    """Encodes documents (term frequencies with k, b, avg_len) and queries (one weight per term)."""

    def __init__(self, k: float = 1.2, b: float = 0.75, avg_len: float = 120.0, language: str = "english") -> None:
        self._model = Bm25(Bm25Config(k=k, b=b, avg_len=avg_len, language=language))

    def _expand(self, text: str) -> str:
        terms = exact_terms(text)
        return f"{text}\n{' '.join(terms)}" if terms else text

    def embed_document(self, text: str) -> SparseVector:
        vector = self._model.embed_document(self._expand(text))
        return SparseVector(list(vector.indices), list(vector.values))

    def embed_query(self, text: str) -> SparseVector:
        vector = self._model.embed_query(self._expand(text))
        return SparseVector(list(vector.indices), list(vector.values))
