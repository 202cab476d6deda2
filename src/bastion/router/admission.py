"""Admission in front of an engine: a bounded wait queue, then 429.

The engine runs as many sequences as its KV cache and batch allow and keeps later requests in
FIFO order; admission bounds how many may wait. A request counts from before tokenisation until
its last chunk; those the engine is not running yet are the ones waiting.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Callable

from bastion.engine import Chunk
from bastion.errors import TooManyRequestsError


class Admission:
    def __init__(
        self,
        running: Callable[[], int],
        max_waiting: int,
        *,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self._running = running
        self.max_waiting = max_waiting
        self._on_done = on_done
        """Hears the end of each request (the router's "last used" and drain bookkeeping)."""
        self.in_flight = 0
        self._mean_seconds = 1.0
        """Moving average of how long a request holds its place."""

    @property
    def waiting(self) -> int:
        return max(0, self.in_flight - self._running())

    async def run(self, chunks: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
        """Pass ``chunks`` through while holding a place; refuse when the queue is full."""
        if self.waiting >= self.max_waiting:
            await chunks.aclose()
            raise TooManyRequestsError(
                f"The server is busy: {self._running()} requests are running and "
                f"{self.waiting} are waiting. Retry later.",
                retry_after=self.retry_after(),
            )
        self.in_flight += 1
        started = time.monotonic()
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.in_flight -= 1
            self._mean_seconds += 0.2 * (time.monotonic() - started - self._mean_seconds)
            try:
                await chunks.aclose()
            finally:
                if self._on_done is not None:
                    self._on_done()

    def retry_after(self) -> int:
        """Seconds until a place is likely free: one slot's share of the queue ahead."""
        running = max(1, self._running())
        return max(1, math.ceil(self._mean_seconds * (self.waiting + 1) / running))
