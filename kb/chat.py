"""Follow-up questions: a conversation's last question, rewritten to stand alone, then answered like ``ask``.

    answer = kb.chat([{"role": "user", "content": "How do I roll back a deployment?"},
                      {"role": "assistant", "content": "..."},
                      {"role": "user", "content": "and how do I undo that?"}])
    answer.question            # "How do I undo a rollback of a deployment?" — what was retrieved for

"And how do I undo that?" retrieves nothing useful on its own: retrieval needs the conversation's subject.
With a generator, the generator rewrites the last question from the recent turns (one short call, its own
fixed prompt, a reply longer than a question is ignored); without one, a rule does: a follow-up (it refers
back — *it, that, this, them* — or starts with *and, what about, how about*, or is a few words only) gets the
content words of the previous questions appended. Citations are exactly as for ``ask``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.llms import LLM, ChatMessage, MessageRole

from kb.errors import ConfigError
from kb.tokens import STOPWORDS

REWRITE_PROMPT = (
    "You rewrite the last question of a conversation so that it can be understood without the conversation. "
    "Keep its meaning, name what its pronouns refer to, do not answer it. Reply with the rewritten question only, "
    "on one line."
)
_REFERS_BACK = re.compile(
    r"\b(it|its|that|this|these|those|them|they|their|there|he|she|one|ones|same|above|previous|former|latter)\b",
    re.IGNORECASE,
)
_STARTS_AS_FOLLOW_UP = re.compile(
    r"^\s*(and|or|but|also|so|then|what about|how about|what if|why not)\b", re.IGNORECASE
)
MAX_HISTORY = 6  # turns the rewrite reads


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str

    @classmethod
    def parse(cls, value: Any, where: str) -> Turn:
        if isinstance(value, Turn):
            return value
        if not isinstance(value, dict) or not isinstance(value.get("content"), str):
            raise ConfigError(f"{where}: expected {{'role': 'user'|'assistant', 'content': text}}")
        role = value.get("role", "user")
        if role not in ("user", "assistant"):
            raise ConfigError(f"{where}.role: expected 'user' or 'assistant', got {role!r}")
        return cls(role, value["content"])


def turns_of(messages: Sequence[Any]) -> list[Turn]:
    turns = [Turn.parse(m, f"messages[{i}]") for i, m in enumerate(messages)]
    if not turns or turns[-1].role != "user":
        raise ConfigError("messages: the last message must be the user's question")
    return turns


def is_follow_up(question: str) -> bool:
    words = re.findall(r"\w+", question)
    return bool(_REFERS_BACK.search(question) or _STARTS_AS_FOLLOW_UP.match(question) or len(words) <= 4)


def content_words(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for word in re.findall(r"[\w.\-/]+", text):
        if word.lower() not in STOPWORDS and len(word) > 1:
            seen.setdefault(word, None)
    return list(seen)


def rewrite_by_rule(turns: list[Turn]) -> str:
    """The last question, with the previous questions' content words when it is a follow-up."""
    question = turns[-1].content.strip()
    earlier = [t.content for t in turns[:-1] if t.role == "user"][-2:]
    if not earlier or not is_follow_up(question):
        return question
    context = [w for w in content_words(" ".join(earlier)) if w.lower() not in question.lower()]
    return f"{question} ({' '.join(context)})" if context else question


def rewrite(turns: list[Turn], llm: LLM | None) -> str:
    """A standalone question for retrieval: the generator's rewrite, or the rule's."""
    question = turns[-1].content.strip()
    if len(turns) == 1 or not any(t.role == "user" for t in turns[:-1]):
        return question
    if llm is None:
        return rewrite_by_rule(turns)
    history = "\n".join(f"{t.role}: {t.content.strip()[:600]}" for t in turns[-MAX_HISTORY:-1])
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content=REWRITE_PROMPT),
        ChatMessage(role=MessageRole.USER, content=f"Conversation:\n{history}\n\nLast question: {question}"),
    ]
    reply = (llm.chat(messages).message.content or "").strip().splitlines()
    candidate = reply[0].strip().strip('"') if reply else ""
    if not candidate or len(candidate) > 4 * max(len(question), 40) or "don't know" in candidate.lower():
        return rewrite_by_rule(turns)  # a reply that is not a question: fall back, never fail the turn
    return candidate
