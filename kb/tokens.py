"""Token counting in the embedder's own tokenizer, so chunk caps mean what the embedder reads."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

# Function words: neither a question's subject (kb.chat) nor a claim an answer makes (kb.grounding).
_STOPWORD_TEXT = """
a an the and or but if then so of to in on at for by with from as is are was were be been being do does did how
what why when where which who whom whose can could should would will shall may might must i you we my your our
it its this that these those there here about into over under again please tell me show they not no yes also
just only than too very their us them he she his her has have had having such each any all some more most other
same own
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WHITESPACE_RUN = re.compile(r"[ \t\n\r]{2,}")  # what BERT splits on; \s also has control chars it deletes


class TokenCounter:
    """Counts and locates word pieces of a Hugging Face fast tokenizer (no special tokens).

    >>> from kb.embedding import resolve_model_path
    >>> counter = TokenCounter.for_model(resolve_model_path("all-MiniLM-L6-v2"))
    >>> counter.count(["rotate the API key"])
    [4]
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        # WordPiece tokenizers (MiniLM's) drop whitespace, so a run of it counts as one space: counting the
        # collapsed text gives the same numbers and is far cheaper on indentation-heavy files (a 2,000-level
        # nested reST list is 4 MB of spaces). Probed, not assumed: SentencePiece models keep their spaces.
        self._whitespace_free = self._ids("a \n\t  b") == self._ids("a b")

    def _ids(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    @classmethod
    def for_model(cls, model_path: Path) -> TokenCounter:
        return _cached_counter(str(model_path))

    def count(self, texts: list[str]) -> list[int]:
        if self._whitespace_free:
            texts = [_WHITESPACE_RUN.sub(" ", text) for text in texts]
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of each token of ``text``."""
        return self._tokenizer.encode(text, add_special_tokens=False).offsets

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that holds at most ``max_tokens`` tokens."""
        offsets = self.offsets(text)
        if len(offsets) <= max_tokens:
            return text
        return text[: offsets[max_tokens - 1][1]] if max_tokens > 0 else ""


@lru_cache(maxsize=4)
def _cached_counter(model_path: str) -> TokenCounter:
    tokenizer_file = Path(model_path) / "tokenizer.json"
    if tokenizer_file.is_file():
        return TokenCounter(Tokenizer.from_file(str(tokenizer_file)))
    # Models without a tokenizer.json: let transformers build the fast tokenizer once.
    from transformers import AutoTokenizer

    return TokenCounter(AutoTokenizer.from_pretrained(model_path).backend_tokenizer)
