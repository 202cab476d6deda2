"""What the router knows of one model (its slot), and the phases of a load or an unload."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from dataclasses import dataclass, field

from bastion.engine.base import Engine
from bastion.router.admission import Admission
from bastion.store.package import LocalModel


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event`` at most ``seconds``. Not ``asyncio.wait_for``: on Python
    3.11 it swallows a cancellation that arrives as the event is set, and the task that
    should stop (a request whose client left, the scheduler at shutdown) carries on."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class Phase(enum.Enum):
    IDLE = "idle"
    LOADING = "loading"
    """Import, verification and engine start in progress."""
    UNLOADING = "unloading"


@dataclass(eq=False)
class Slot:
    """What the router knows of one model, loaded or not."""

    name: str
    admission: Admission = field(init=False)
    engine: Engine | None = None
    local: LocalModel | None = None
    phase: Phase = Phase.IDLE
    served: bool = False
    """Its engine has been ready: a ``starting`` engine is then restarting after a crash."""
    error: str | None = None
    """Why the last load failed (operators only); None once it loads or is retried."""
    failed_at: float = 0.0
    load_seconds: float | None = None
    verify_seconds: float | None = None
    memory: int = 0
    """What the model held when last loaded (``ModelInfo.memory``): the next estimate."""
    last_used: float = 0.0
    """``time.monotonic()`` of the last request's arrival or end (or of the load)."""
    waiters: list[float] = field(default_factory=list)
    """Arrival times of requests waiting for the model to load (or to stop draining)."""
    leases: int = 0
    """Requests that acquired the model and have not released it."""
    draining_since: float | None = None
    """Set while the model makes way for another: later arrivals queue instead."""
    draining_for: str | None = None
    unload_reason: str = "idle"
    loads: int = 0
    unloads: int = 0
    published: str = ""

    def last_used_wall(self) -> float | None:
        if not self.last_used:
            return None
        return round(time.time() - (time.monotonic() - self.last_used), 3)
