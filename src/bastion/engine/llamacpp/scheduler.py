"""Which KV sequence a request runs in: pure bookkeeping, no llama.cpp calls.

Each slot is one llama.cpp sequence id with its own ``ctx_per_slot`` cells (a separate KV
stream, so a sequence's numbers never depend on what else is in the batch). A slot whose
request finished keeps its tokens' keys and values as a prefix cache: a newcomer takes the idle
slot that already holds the longest prefix of its prompt and computes only the rest (a growing
multi-turn chat, a shared system prompt). Ties go first to the slot that keeps the busy slots'
sequence ids consecutive, then to the least recently used one, so the freshest caches survive
longest. When another slot, busy or not, holds a clearly longer prefix (users arriving together
with the same system prompt), its KV is copied into the chosen slot instead of being computed
again.

Why consecutive: with one KV stream per sequence, llama.cpp decodes sequences together in one
pass (one "ubatch") only when their ids follow each other in the batch (a pass works on one
contiguous range of streams). Running sequences 0, 2 and 3 cost two passes per step, {0} and
{2, 3}, where 0, 1 and 2 cost one; a pass costs nearly as much as a whole step on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class Slot:
    """One llama.cpp sequence id and the tokens whose KV it holds, in position order."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    busy: bool = False
    last_used: float = 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def runs(seq_ids: set[int]) -> int:
    """How many llama.cpp passes a step over these sequences takes: runs of consecutive ids."""
    return sum(1 for i in seq_ids if i - 1 not in seq_ids)


def choose_slot(
    slots: Sequence[Slot], prompt: Sequence[int], *, reuse: bool = True
) -> tuple[Slot, int] | None:
    """The idle slot for ``prompt`` and how many of its tokens are already cached there.

    At least the last prompt token is always left to compute: its logits give the first
    sampled token. None when every slot is busy. With ``reuse`` off nothing is reused.
    """
    idle = [s for s in slots if not s.busy]
    if not idle:
        return None
    busy = {s.seq_id for s in slots if s.busy}

    def passes(slot: Slot) -> int:
        return runs(busy | {slot.seq_id})

    if not reuse:
        return min(idle, key=lambda s: (passes(s), s.last_used)), 0
    best = max(idle, key=lambda s: (common_prefix(s.cached, prompt), -passes(s), -s.last_used))
    return best, min(common_prefix(best.cached, prompt), len(prompt) - 1)


COPY_MIN_GAIN = 32
"""Copying a KV stream moves the whole stream (``ctx_per_slot`` cells), a few milliseconds
here; below this many tokens of gain, computing them is as cheap."""


def prefix_donor(
    slots: Sequence[Slot], target: Slot, prompt: Sequence[int], keep: int
) -> tuple[Slot, int] | None:
    """A busy slot whose cached prefix of ``prompt`` is at least ``COPY_MIN_GAIN`` tokens
    longer than the ``keep`` tokens ``target`` already holds, and that prefix's length (the
    last prompt token is still left to compute). Idle slots were already weighed when
    ``target`` was chosen as the idle slot with the longest prefix."""
    best = max(
        (s for s in slots if s.busy and s is not target),
        key=lambda s: common_prefix(s.cached, prompt),
        default=None,
    )
    if best is None:
        return None
    shared = min(common_prefix(best.cached, prompt), len(prompt) - 1)
    return (best, shared) if shared >= keep + COPY_MIN_GAIN else None
