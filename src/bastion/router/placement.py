"""Which loaded models make room for another: pure bookkeeping, no engines, no clocks.

The router keeps at most ``max_loaded`` models and ``max_memory`` bytes (weights plus KV
cache) loaded. To fit one more it unloads the least recently used models first; a busy one
(running or queued requests, or a load in progress) goes only when the caller allows it,
after it has drained.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """A model that holds memory: loaded, or loading."""

    name: str
    memory: int
    """Bytes it holds (or is expected to hold)."""
    last_used: float
    busy: bool
    """Running or queued requests; never unloaded while true."""
    movable: bool = True
    """False while it is loading or unloading: it cannot be chosen."""


@dataclass(frozen=True)
class Limits:
    max_loaded: int = 0
    """0: no count limit."""
    max_memory: int = 0
    """Bytes; 0: no limit."""

    def fits(self, count: int, memory: int) -> bool:
        return (self.max_loaded == 0 or count <= self.max_loaded) and (
            self.max_memory == 0 or memory <= self.max_memory
        )


def make_room(
    residents: Iterable[Resident], need: int, limits: Limits, *, take_busy: bool = False
) -> list[str] | None:
    """The residents to unload, least recently used first, so that one more model of
    ``need`` bytes fits; [] when it fits already; None when it cannot fit (the ones that
    would have to go are busy or moving, or it is bigger than ``max_memory`` alone). With
    ``take_busy``, busy residents may be chosen too (idle ones still go first)."""
    present = list(residents)
    count = len(present) + 1
    memory = sum(r.memory for r in present) + need
    if limits.fits(count, memory):
        return []
    candidates = sorted(
        (r for r in present if r.movable and (take_busy or not r.busy)),
        key=lambda r: (r.busy, r.last_used),
    )
    chosen: list[str] = []
    for resident in candidates:
        chosen.append(resident.name)
        count -= 1
        memory -= resident.memory
        if limits.fits(count, memory):
            return chosen
    return None
