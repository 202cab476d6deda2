"""Requests inside the embedded engine and how their output reaches the event loop.

A ``Request`` carries its own asyncio queue (chunks, then ``None``; an exception travels the same
way), or a ``Sink`` that the owner thread calls itself (the engine process writes frames for
the API process that way, without a task per request). The owner thread collects a step's
output in an ``Outbox`` and hands it over in one wake-up of each event loop or one call of each
sink (``deliver_all``), merging a stream's successive mid-stream chunks (``coalesce``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Protocol

from bastion.engine.base import Chunk, GenerationParams
from bastion.engine.llamacpp.sampler import SamplerChain
from bastion.engine.llamacpp.scheduler import Slot
from bastion.engine.stops import StopBuffer, Utf8Stream

Item = Chunk | BaseException | None


class Sink(Protocol):
    """Takes requests' output on the engine's owner thread, a step's items in one call (in
    order per request; ``None`` ends a request, an exception fails it). It must not block for
    long: the next decode step waits for it."""

    def deliver(self, items: list[tuple[Request, Item]]) -> None: ...


@dataclass(eq=False)
class Request:
    prompt: list[int]
    max_tokens: int
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    request_id: str = "-"
    submitted: float = field(default_factory=time.monotonic)
    out: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    sink: Sink | None = None
    """Set: output goes to the sink instead of ``out``."""

    def send(self, item: Item) -> None:
        """Hand ``item`` over at once (outside the step loop, e.g. on shutdown)."""
        deliver_all([(self, item)])


@dataclass(eq=False)
class Paused:
    """A sequence's KV state while it has no slot."""

    state: ctypes.Array[ctypes.c_uint8]
    tokens: list[int]


@dataclass(eq=False)
class Sequence:
    request: Request
    slot: Slot
    sampler: SamplerChain
    started: float
    """When the sequence last got its slot (for time slicing)."""
    reused: int = 0
    """Prompt tokens whose KV came from the prefix cache."""
    queued: float = 0.0
    """Seconds between submission and getting a slot."""
    paused: Paused | None = None
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    stops: StopBuffer = field(default_factory=lambda: StopBuffer(()))
    generated: int = 0
    next_token: int = -1
    batch_index: int = -1

    @property
    def prefilling(self) -> bool:
        return self.next_token < 0


def request_of(item: Request | Sequence) -> Request:
    return item.request if isinstance(item, Sequence) else item


def is_final(item: Item) -> bool:
    return item is None or isinstance(item, BaseException)


def deliver(items: list[tuple[Request, Item]]) -> None:
    for request, item in items:
        request.out.put_nowait(item)


def deliver_all(items: list[tuple[Request, Item]]) -> None:
    """One hand-off per event loop or sink (tests may run several loops; the server has one)."""
    by_target: dict[asyncio.AbstractEventLoop | Sink, list[tuple[Request, Item]]] = {}
    for request, item in items:
        target = request.loop if request.sink is None else request.sink
        by_target.setdefault(target, []).append((request, item))
    for target, batch in by_target.items():
        if isinstance(target, asyncio.AbstractEventLoop):
            deliver_soon(target, batch)
        else:
            target.deliver(batch)


def deliver_soon(loop: asyncio.AbstractEventLoop, items: list[tuple[Request, Item]]) -> None:
    with contextlib.suppress(RuntimeError):  # the event loop is already closed
        loop.call_soon_threadsafe(deliver, items)


def is_urgent(request: Request, item: Item) -> bool:
    """Items that must not wait: the first token, the last chunk, errors."""
    return (
        not isinstance(item, Chunk)
        or item.finish_reason is not None
        or (item.completion_tokens <= 1)
    )


def coalesce(items: list[tuple[Request, Item]]) -> list[tuple[Request, Item]]:
    """Merge each request's successive mid-stream chunks into one (order per request kept)."""
    out: list[tuple[Request, Item]] = []
    last: dict[int, int] = {}  # request -> index in ``out`` of its latest item
    for request, item in items:
        at = last.get(id(request))
        if at is not None and isinstance(item, Chunk):
            prev = out[at][1]
            if isinstance(prev, Chunk) and prev.finish_reason is None:
                merged = dataclasses.replace(
                    item, text=prev.text + item.text, logprobs=prev.logprobs + item.logprobs
                )
                out[at] = (request, merged)
                continue
        last[id(request)] = len(out)
        out.append((request, item))
    return out


class Outbox:
    """Items produced during a step, handed over together after it (``flush``).

    Mid-stream text may wait up to ``interval`` seconds and then goes out merged; first tokens,
    last chunks and errors go at once. Each wake-up of an event loop takes a core from
    llama.cpp's threads for a moment, so fewer of them means faster decoding.
    """

    def __init__(self, interval: float) -> None:
        self.items: list[tuple[Request, Item]] = []
        self.held: set[Request] = set()
        """Requests the owner thread has taken from the inbox and not yet answered in full."""
        self._interval = interval
        self._flushed_at = 0.0

    def flush(self) -> None:
        if not self.items:
            return
        now = time.monotonic()
        if now - self._flushed_at < self._interval and not any(
            is_urgent(request, item) for request, item in self.items
        ):
            return
        self._flushed_at = now
        items, self.items = coalesce(self.items), []
        self.held.difference_update(request for request, item in items if is_final(item))
        deliver_all(items)

    def fail_held(self, error: BaseException) -> None:
        """Fail every request taken in and not answered in full; drop what waits to go out."""
        held, self.held, self.items = self.held, set(), []
        deliver_all([(request, error) for request in held])
