"""One stand-in engine for every test that does not need llama.cpp (API, middleware, router).

It keeps the ``Engine`` contract the real engines keep (see tests/engine/test_conformance.py):
its own lifecycle, ``running`` while a generation is in progress, stop sequences, a context
limit (one "token" per whitespace-separated word), cancellation and close. Knobs make it slow,
make its load fail, or crash it mid-stream, so the router and the API can be tested against
every state an engine can be in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from bastion.engine.base import (
    Chunk,
    EngineState,
    FinishReason,
    GenerationParams,
    ModelInfo,
    ModelSpec,
)
from bastion.engine.lifecycle import Lifecycle
from bastion.engine.stops import StopBuffer
from bastion.errors import (
    ContextLengthExceededError,
    EngineError,
    ModelLoadError,
    ServiceUnavailableError,
)


@dataclass
class FakeBehaviour:
    """How a ``FakeEngine`` behaves; shared by every engine a factory builds."""

    reply: str = "ok"
    """Words of the answer, one per token (repeated to fill ``max_tokens`` when asked)."""
    token_delay: float = 0.0
    load_delay: float = 0.0
    fail_load: str | None = None
    context_length: int = 2048
    chat: bool = True
    memory: int = 1000
    default_max_tokens: int = 16
    fail_with: Exception | None = None
    """Raised by every generation once it has yielded ``fail_after`` chunks (0: before the
    first one, after the context check), as an engine that fails mid-stream does."""
    fail_after: int = 0
    hang_load: bool = False
    """``start()`` never finishes (a child that never answers ``init``) until cancelled."""


class FakeEngine:
    """See the module docstring. ``builds`` counts the engines a test's factory made."""

    def __init__(self, spec: ModelSpec, behaviour: FakeBehaviour | None = None) -> None:
        self.spec = spec
        self.behaviour = behaviour or FakeBehaviour()
        self.lifecycle = Lifecycle(spec.name, "fake")
        self.running = 0
        self.generated = 0
        """Generations started (for assertions on who served what)."""
        self.seen: list[GenerationParams] = []
        """Every request that reached ``generate``, refused or not."""
        self._created = int(time.time())
        self._active: set[asyncio.Queue[Exception | None]] = set()
        self.closed = False

    @property
    def info(self) -> ModelInfo:
        b = self.behaviour
        return ModelInfo(
            self.spec.name,
            self.spec.digest,
            b.context_length,
            self._created,
            chat=b.chat and not self.spec.completion_only,
            memory=b.memory,
        )

    async def start(self) -> None:
        self.lifecycle.move(EngineState.STARTING, "loading (fake)")
        if self.behaviour.load_delay:
            await asyncio.sleep(self.behaviour.load_delay)
        if self.behaviour.hang_load:
            await asyncio.Event().wait()
        if self.behaviour.fail_load is not None:
            self.lifecycle.move(EngineState.FAILED, self.behaviour.fail_load)
            raise ModelLoadError(self.behaviour.fail_load)
        self.lifecycle.move(EngineState.READY, "loaded (fake)")

    async def generate(self, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        self.seen.append(params)
        if not self.lifecycle.ready:
            raise ServiceUnavailableError(f"model '{self.spec.name}' is not loaded")
        text = params.prompt or " ".join(m.content for m in params.messages or ())
        n_prompt = len(text.split())
        limit = self.behaviour.context_length
        if n_prompt >= limit or n_prompt + (params.max_tokens or 0) > limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens.", param="messages"
            )
        budget = params.max_tokens or self.behaviour.default_max_tokens
        words = self.behaviour.reply.split() or ["ok"]
        stops = StopBuffer(params.stop)
        crash: asyncio.Queue[Exception | None] = asyncio.Queue()
        self._active.add(crash)
        self.running += 1
        self.generated += 1
        yielded = 0
        try:
            for n in range(1, budget + 1):
                if self.behaviour.token_delay:
                    await asyncio.sleep(self.behaviour.token_delay)
                if not crash.empty():
                    error = crash.get_nowait()
                    raise error or EngineError("the engine failed")
                if self.behaviour.fail_with is not None and yielded >= self.behaviour.fail_after:
                    raise self.behaviour.fail_with
                last = n == budget or (n == len(words) and params.max_tokens is None)
                piece = words[(n - 1) % len(words)] + ("" if last else " ")
                out, hit = stops.push(piece)
                if hit:
                    yield Chunk(out, n_prompt, n, finish_reason="stop")
                    return
                if last:
                    reason: FinishReason = "length" if n == budget else "stop"
                    yield Chunk(out + stops.flush(), n_prompt, n, finish_reason=reason)
                    return
                if out:
                    yielded += 1
                    yield Chunk(out, n_prompt, n)
        finally:
            self.running -= 1
            self._active.discard(crash)

    def crash(self, reason: str = "the engine process died") -> None:
        """Fail every generation in progress at its next token and mark the engine failed,
        as a supervised engine whose process died does."""
        for queue in self._active:
            queue.put_nowait(EngineError("the engine failed; the request was not completed"))
        self.lifecycle.move(EngineState.FAILED, reason)

    def restarting(self) -> None:
        """After ``crash()``: the supervisor starts the engine again (``finish_restart()``
        makes it ready), as a supervised engine restarting after a crash does."""
        self.lifecycle.move(EngineState.STARTING, "restarting after a crash (fake)")

    def finish_restart(self) -> None:
        self.lifecycle.move(EngineState.READY, "restarted (fake)")

    async def close(self) -> None:
        self.closed = True
        self.lifecycle.move(EngineState.STOPPING, "closing (fake)")
        for queue in self._active:
            queue.put_nowait(ServiceUnavailableError("the server is shutting down"))
        self.lifecycle.move(EngineState.STOPPED, "closed (fake)")


def fake_factory(
    behaviour: FakeBehaviour | None = None,
) -> tuple[list[FakeEngine], Callable[[ModelSpec], FakeEngine]]:
    """A factory for ``create_app``/the registry and the list of engines it built."""
    built: list[FakeEngine] = []
    shared = behaviour or FakeBehaviour()

    def build(spec: ModelSpec) -> FakeEngine:
        engine = FakeEngine(spec, shared)
        built.append(engine)
        return engine

    return built, build
