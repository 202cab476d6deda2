"""The KV streams behind the slots: every llama.cpp memory operation the engine does on a slot.

Each method keeps the invariant that ``slot.cached`` lists exactly the tokens whose keys and
values the slot's stream holds, in position order. Called only from the engine's owner thread.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp as ll

from bastion.engine.llamacpp.requests import Paused
from bastion.engine.llamacpp.scheduler import Slot


class SlotStreams:
    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._memory = ll.llama_get_memory(ctx)
        self._copying: set[int] = set()
        """Slots whose stream llama.cpp will copy, or copy into, at the next decode."""

    def clear_all(self) -> None:
        ll.llama_memory_clear(self._memory, True)

    def keep_prefix(self, slot: Slot, keep: int) -> int:
        """Drop the slot's cells from position ``keep`` on; how many tokens it still holds
        (0 when llama.cpp cannot cut a sequence in the middle and drops all of it)."""
        if not ll.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            ll.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            keep = 0
        del slot.cached[keep:]
        return keep

    def copy_prefix(self, source: Slot, target: Slot, keep: int) -> int:
        """Give ``target`` the first ``keep`` tokens of ``source``'s stream (a shared system
        prompt). With one stream per slot llama.cpp copies the whole stream, at the start of
        the next decode; the cells past ``keep`` are dropped at once."""
        ll.llama_memory_seq_cp(self._memory, source.seq_id, target.seq_id, -1, -1)
        self._copying.update((source.seq_id, target.seq_id))
        target.cached[:] = source.cached[:keep]
        return self.keep_prefix(target, keep)

    def copy_pending(self, slot: Slot) -> bool:
        """Restoring a saved stream here now would be overwritten by a pending copy."""
        return slot.seq_id in self._copying

    def decoded(self, status: int) -> None:
        """After ``llama_decode``: it performed the pending copies unless it refused the
        batch up front (-1), which returns before the copies and leaves them queued."""
        if status != -1:
            self._copying.clear()

    def save(self, slot: Slot) -> Paused | None:
        """Copy the slot's stream out to host memory; None when llama.cpp could not copy it.

        The cells stay: the slot's next request reuses whatever prefix it shares with them
        (a chat template's system text, a shared system prompt) instead of computing it."""
        size = ll.llama_state_seq_get_size(self._ctx, slot.seq_id)
        state = (ctypes.c_uint8 * size)()
        if ll.llama_state_seq_get_data(self._ctx, state, size, slot.seq_id) != size:
            return None
        return Paused(state, list(slot.cached))

    def restore(self, paused: Paused, slot: Slot) -> bool:
        """Put a saved stream into ``slot``, bit for bit; False when llama.cpp refused it."""
        ll.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        restored = ll.llama_state_seq_set_data(
            self._ctx, paused.state, len(paused.state), slot.seq_id
        )
        slot.cached[:] = paused.tokens if restored else []
        return bool(restored)

    def drop(self, slot: Slot) -> None:
        ll.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.cached.clear()
