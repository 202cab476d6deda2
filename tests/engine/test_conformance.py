"""One contract for every engine kind, each built through ``bastion.engine.factory``.

The router and the API see only the ``Engine`` protocol, so every kind must behave the same
way on what they rely on: chunks that end with a finish reason and counts, stop sequences,
``max_tokens``, cancellation by closing the generator, context overflow before any chunk,
close, and the lifecycle states. A new kind joins by adding a row to ``KINDS``.

Each kind's engine runs on one event loop for the whole module (``asyncio.Runner``): a
supervised child process talks to the loop it was started on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bastion.engine import factory
from bastion.engine.base import (
    ChatMessage,
    Chunk,
    Engine,
    EngineState,
    GenerationParams,
    ModelSpec,
    SamplingParams,
)
from bastion.errors import ContextLengthExceededError, ServiceUnavailableError
from bastion.settings import EngineSettings
from tests.fakes import FakeBehaviour, FakeEngine

CTX = 512
GREEDY = SamplingParams(temperature=0.0)
WAIT = 120.0
"""Bound on any one await, so a broken engine fails the test instead of hanging it."""

KINDS = ["fake", "llamacpp-thread", "llamacpp-process"]

T = TypeVar("T")


class Kind:
    """One engine kind under test: how to describe its model and configure it."""

    def __init__(self, name: str, smollm2: Path, runner: asyncio.Runner) -> None:
        self.name = name
        self.runner = runner
        if name == "fake":
            self.spec = ModelSpec(name="fake-model", kind="fake")
        else:
            self.spec = ModelSpec(name="smollm2", kind="llamacpp", weights=smollm2, digest="0" * 64)
        isolation = "process" if name == "llamacpp-process" else "thread"
        # stream_interval 0: every decoded token goes out as it comes, so a stream of several
        # tokens is several chunks whatever the machine's speed.
        self.settings = EngineSettings(
            threads=2, slots=2, ctx_per_slot=CTX, stream_interval=0.0, isolation=isolation
        )

    def build(self) -> Engine:
        return factory.build_engine(self.spec, self.settings)

    def run(self, awaitable: Awaitable[T]) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(awaitable, WAIT)

        return self.runner.run(bounded())


def build_fake(spec: ModelSpec, settings: EngineSettings) -> Engine:
    # A reply long enough to stream, stop inside and cut by max_tokens, like a real model's.
    reply = "The capital of France is Paris , a city on the Seine with many bridges ."
    behaviour = FakeBehaviour(reply=reply, context_length=settings.ctx_per_slot)
    return FakeEngine(spec, behaviour)


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest, smollm2_file: Path) -> Iterator[Kind]:
    with pytest.MonkeyPatch.context() as patch, asyncio.Runner() as runner:
        # Through the factory like the real kinds: the suite tests what the router gets.
        patch.setitem(factory.BUILDERS, "fake", build_fake)
        yield Kind(request.param, smollm2_file, runner)


@pytest.fixture(scope="module")
def engine(kind: Kind) -> Iterator[Engine]:
    """A started engine shared by the module's tests of one kind."""
    eng = kind.build()
    kind.run(eng.start())
    try:
        yield eng
    finally:
        kind.run(eng.close())


async def collect(engine: Engine, params: GenerationParams) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(params)]


def run(kind: Kind, engine: Engine, **kwargs: Any) -> list[Chunk]:
    return kind.run(collect(engine, GenerationParams(**kwargs)))


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def test_generate_ends_with_a_finish_reason_and_counts(kind: Kind, engine: Engine) -> None:
    chunks = run(kind, engine, prompt="The capital of France is", sampling=GREEDY, max_tokens=12)
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert last.prompt_tokens > 0
    assert 0 < last.completion_tokens <= 12
    assert text_of(chunks).strip()
    assert engine.running == 0


def test_chat_messages_are_answered(kind: Kind, engine: Engine) -> None:
    assert engine.info.chat
    messages = (ChatMessage("user", "Say hello."),)
    chunks = run(kind, engine, messages=messages, sampling=GREEDY, max_tokens=8)
    assert chunks[-1].finish_reason in ("stop", "length")
    assert chunks[-1].prompt_tokens > 0


def test_stream_is_several_chunks_that_join_into_the_answer(kind: Kind, engine: Engine) -> None:
    params: dict[str, Any] = {"prompt": "Once upon a time", "sampling": GREEDY, "max_tokens": 16}
    first = run(kind, engine, **params)
    pieces = [c.text for c in first if c.text]
    assert len(pieces) >= 2, first
    counts = [c.completion_tokens for c in first]
    assert counts == sorted(counts)
    assert counts[-1] == 16 or first[-1].finish_reason == "stop"
    assert text_of(run(kind, engine, **params)) == "".join(pieces)  # greedy: the same text


def test_stop_sequence_cuts_the_text_and_is_not_included(kind: Kind, engine: Engine) -> None:
    params: dict[str, Any] = {"prompt": "Count: 1, 2, 3,", "sampling": GREEDY, "max_tokens": 30}
    full = text_of(run(kind, engine, **params))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    cut = run(kind, engine, **params, stop=(stop,))
    assert text_of(cut) == full[: full.find(stop)]
    assert stop not in text_of(cut)
    assert cut[-1].finish_reason == "stop"


def test_max_tokens_gives_length_with_the_exact_count(kind: Kind, engine: Engine) -> None:
    chunks = run(kind, engine, prompt="Once upon a time", sampling=GREEDY, max_tokens=7)
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 7


def test_closing_the_generator_cancels_and_frees_the_engine(kind: Kind, engine: Engine) -> None:
    async def scenario() -> tuple[int, list[Chunk]]:
        long = GenerationParams(prompt="Tell a long story.", sampling=GREEDY, max_tokens=400)
        stream = engine.generate(long)
        await anext(stream)
        busy = engine.running
        await stream.aclose()  # a client that disconnects
        after = await collect(engine, GenerationParams(prompt="Hi", sampling=GREEDY, max_tokens=3))
        return busy, after

    busy, after = kind.run(scenario())
    assert busy == 1
    assert after[-1].finish_reason == "length"
    assert after[-1].completion_tokens == 3
    # Two slots: had the cancelled generation gone on, it would still be running here.
    assert engine.running == 0


def test_a_prompt_past_the_context_fails_before_any_chunk(kind: Kind, engine: Engine) -> None:
    received: list[Chunk] = []

    async def overflow(params: GenerationParams) -> None:
        async for chunk in engine.generate(params):
            received.append(chunk)

    with pytest.raises(ContextLengthExceededError, match=str(CTX)):
        kind.run(overflow(GenerationParams(prompt="hello " * (CTX + 10), sampling=GREEDY)))
    with pytest.raises(ContextLengthExceededError):
        kind.run(overflow(GenerationParams(prompt="hello", sampling=GREEDY, max_tokens=CTX)))
    assert received == []
    assert engine.running == 0
    assert run(kind, engine, prompt="Hi", sampling=GREEDY, max_tokens=2)[-1].completion_tokens == 2


def test_info_describes_the_loaded_model(kind: Kind, engine: Engine) -> None:
    info = engine.info
    assert info.name == kind.spec.name
    assert info.digest == kind.spec.digest
    assert info.context_length == CTX
    assert info.memory > 0


def test_lifecycle_is_stopped_then_ready_then_stopped(kind: Kind) -> None:
    eng = kind.build()
    seen: list[EngineState] = []
    eng.lifecycle.listen(lambda state, _reason: seen.append(state))
    assert eng.lifecycle.state is EngineState.STOPPED
    assert eng.running == 0
    kind.run(eng.start())
    assert eng.lifecycle.state is EngineState.READY
    assert eng.lifecycle.ready
    kind.run(eng.close())
    assert eng.lifecycle.state is EngineState.STOPPED
    assert not eng.lifecycle.ready
    assert seen[:2] == [EngineState.STARTING, EngineState.READY]
    assert seen[-2:] == [EngineState.STOPPING, EngineState.STOPPED]
    assert EngineState.FAILED not in seen


def test_close_ends_streams_and_refuses_new_requests(kind: Kind) -> None:
    eng = kind.build()
    kind.run(eng.start())

    async def close_mid_stream() -> tuple[list[Chunk], BaseException | None]:
        long = GenerationParams(prompt="Tell a long story.", sampling=GREEDY, max_tokens=400)
        stream = eng.generate(long)
        received = [await anext(stream)]
        await eng.close()
        try:
            received.extend([chunk async for chunk in stream])
        except ServiceUnavailableError as exc:
            return received, exc
        return received, None

    received, error = kind.run(close_mid_stream())
    assert error is not None, "a stream in progress ended normally after close"
    assert received[-1].finish_reason is None
    assert eng.lifecycle.state is EngineState.STOPPED
    assert eng.running == 0
    with pytest.raises(ServiceUnavailableError):
        run(kind, eng, prompt="Hi", sampling=GREEDY, max_tokens=2)
    kind.run(eng.close())  # a second close is harmless
    assert eng.lifecycle.state is EngineState.STOPPED
