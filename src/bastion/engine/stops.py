"""Stop sequences over streamed text.

Text arrives in pieces (one token at a time); a stop sequence may straddle two pieces. The
buffer emits only text that can no longer turn into a stop sequence and holds back the longest
tail that is still a prefix of one, so a stop sequence is never emitted, even partly.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopBuffer:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return (text safe to emit, whether a stop sequence was hit)."""
        if not self._stops:
            return text, False
        buf = self._held + text
        hit = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if hit >= 0:
            self._held = ""
            return buf[:hit], True
        keep = self._held_tail(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Text held back when generation ends for another reason."""
        held, self._held = self._held, ""
        return held

    def _held_tail(self, buf: str) -> int:
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:k]):
                    best = k
                    break
        return best


class Utf8Stream:
    """Turns token byte pieces into text without splitting multi-byte characters."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
