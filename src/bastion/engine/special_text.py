"""Keep the text of control tokens in message content from becoming control tokens.

A rendered chat prompt is tokenized with special-token parsing on, so that the template's own
markers (``<|im_start|>``, ``<start_of_turn>``, ...) become their control tokens. Content must
not get the same treatment, or a user could close their turn and write a system turn. Before
rendering, every control-token text in a message's content is swapped for a placeholder that no
content contains (private-use characters around a random number); after rendering, the prompt is
split at the placeholders. Template text is tokenized with special parsing on, each swapped text
with it off. Content without control-token text renders and tokenizes exactly as before.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bastion.engine.base import ChatMessage
from bastion.errors import ModelLoadError

_OPEN, _CLOSE = "\ue000", "\ue001"
"""Private-use characters: no case, no whitespace, so templates' trim/upper leave them alone."""


@dataclass(frozen=True)
class Segment:
    text: str
    literal: bool
    """True for control-token text that came from content: tokenize it with parsing off."""


@dataclass(frozen=True)
class Shielded:
    """Messages with their control-token texts swapped out, and how to swap them back."""

    messages: tuple[ChatMessage, ...]
    nonce: str
    originals: tuple[str, ...]

    def segments(self, rendered: str) -> list[Segment]:
        if not self.originals:
            return [Segment(rendered, literal=False)]
        pattern = re.compile(re.escape(_OPEN + self.nonce) + r"(\d+)" + re.escape(_CLOSE))
        out: list[Segment] = []
        start = 0
        for match in pattern.finditer(rendered):
            index = int(match.group(1))
            if index >= len(self.originals):
                continue
            if match.start() > start:
                out.append(Segment(rendered[start : match.start()], literal=False))
            out.append(Segment(self.originals[index], literal=True))
            start = match.end()
        if start < len(rendered):
            out.append(Segment(rendered[start:], literal=False))
        return out


class SpecialTextShield:
    """Finds the texts of a vocabulary's control tokens in message content."""

    def __init__(self, texts: Iterable[str]) -> None:
        words = sorted({t for t in texts if t})
        try:
            self._pattern = re.compile(_trie_pattern(words)) if words else None
        except (RecursionError, re.error, OverflowError):
            # Only a crafted vocabulary nests this deep; serving it unguarded is not an option.
            raise ModelLoadError(
                "the model's control tokens are too many or too long to guard against"
            ) from None

    def shield(self, messages: Sequence[ChatMessage]) -> Shielded:
        pattern = self._pattern
        if pattern is None or not any(pattern.search(m.content) for m in messages):
            return Shielded(tuple(messages), "", ())
        nonce = _fresh_nonce(messages)
        originals: list[str] = []

        def swap(match: re.Match[str]) -> str:
            originals.append(match.group(0))
            return f"{_OPEN}{nonce}{len(originals) - 1}{_CLOSE}"

        shielded = tuple(ChatMessage(m.role, pattern.sub(swap, m.content)) for m in messages)
        return Shielded(shielded, nonce, tuple(originals))


def _fresh_nonce(messages: Sequence[ChatMessage]) -> str:
    while True:  # digits only: a template's upper() or title() cannot change them
        nonce = f"{secrets.randbelow(10**12):012d}:"
        if not any(_OPEN + nonce in m.content for m in messages):
            return nonce


def _trie_pattern(words: list[str]) -> str:
    """One regex matching any word, longest first, as a trie: thousands of control tokens
    (Gemma has over 6,000) cost a few steps per character, not one per token."""
    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict) -> str:  # type: ignore[type-arg]
        branches = [re.escape(char) + build(child) for char, child in node.items() if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)
