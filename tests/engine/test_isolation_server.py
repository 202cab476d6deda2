"""The engine process's ``Server`` in this process, over a socket pair: with the stand-in
engine (no ``submit``: a task per generation forwards its chunks) and with a scripted engine
that has ``submit`` and hands output to the server's ``deliver`` from another thread, as the
embedded engine's owner thread does (that engine itself runs in a real child in
test_isolation.py and test_conformance.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

from bastion.engine.base import Chunk, Engine, GenerationParams, ModelSpec
from bastion.engine.isolation import wire
from bastion.engine.isolation.child import Server, Submits
from bastion.engine.llamacpp.requests import Item, Request, Sink
from bastion.errors import EngineError
from tests.fakes import FakeBehaviour, FakeEngine

Script = Callable[[list[Request]], list[tuple[Request, Item]]]
"""What the scripted engine delivers once a request is queued, given every request so far."""


class ScriptedSubmitter(FakeEngine):
    """Queues nothing: each ``submit`` runs the next script on a thread, as an engine's
    owner thread would hand a step's output to the sink."""

    def __init__(self, *scripts: Script) -> None:
        super().__init__(ModelSpec("scripted", "fake"))
        self.scripts = list(scripts)
        self.requests: list[Request] = []

    async def submit(self, params: GenerationParams, sink: Sink | None = None) -> Request:
        assert sink is not None
        request = Request([1, 2], 8, params, asyncio.get_running_loop(), sink=sink)
        self.requests.append(request)
        items = self.scripts.pop(0)(self.requests)
        threading.Timer(0.05, sink.deliver, (items,)).start()
        return request


def chunk(text: str, n: int, finish: str | None = None) -> Chunk:
    return Chunk(text, 2, n, (), finish)  # type: ignore[arg-type]


async def exchange(
    engine: Engine, *batches: list[list[Any]], answers: int
) -> tuple[int, list[list[Any]]]:
    """Send each batch of frames (0.2 s apart) to a ``Server`` of ``engine``, read until
    ``answers`` generations have ended, then close; the exit status and what came back."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=theirs)
    serving = asyncio.create_task(Server(engine, reader, writer).serve())
    parent_reader, parent_writer = await asyncio.open_unix_connection(sock=ours)
    for i, batch in enumerate(batches):
        if i:
            await asyncio.sleep(0.2)  # the earlier ones are queued in the engine by now
        parent_writer.write(b"".join(wire.frame(message) for message in batch))
    answered: list[list[Any]] = []
    while sum(1 for m in answered if m[0] in ("e", "x")) < answers:
        answered.append(await asyncio.wait_for(wire.read_frame(parent_reader), 10))
    parent_writer.write(wire.frame(["q"]))
    status = await asyncio.wait_for(serving, 10)
    for end in (writer, parent_writer):
        end.close()
        await end.wait_closed()
    return status, answered


def generate(request: int, **params: Any) -> list[Any]:
    return ["g", request, f"req-{request}", wire.encode_params(GenerationParams(**params))]


def test_an_engine_without_submit_streams_through_a_task_per_generation() -> None:
    async def scenario() -> tuple[int, list[list[Any]]]:
        engine = FakeEngine(ModelSpec("fake", "fake"), FakeBehaviour(reply="one two three"))
        assert not isinstance(engine, Submits)
        await engine.start()
        return await exchange(
            engine,
            [generate(1, prompt="hi", max_tokens=3), generate(2, prompt="x " * 5000)],
            answers=2,
        )

    status, frames = asyncio.run(scenario())
    assert status == 0
    chunks = [wire.decode_chunk(m) for m in frames if m[0] == "c" and m[1] == 1]
    assert "".join(c.text for c in chunks).split() == ["one", "two", "three"]
    assert chunks[-1].finish_reason == "length"
    assert [m[:2] for m in frames if m[0] == "e"] == [["e", 1]]
    (failed,) = [m for m in frames if m[0] == "x"]
    assert failed[1] == 2  # the refusal keeps its class and param across the channel
    error = wire.decode_error(failed[2])
    assert error.status == 400
    assert error.param == "messages"


def test_a_submitting_engine_streams_through_its_sink_in_order() -> None:
    engine = ScriptedSubmitter(
        lambda rs: [(rs[0], chunk("a", 1)), (rs[0], chunk("b", 2)), (rs[0], EngineError("boom"))],
        lambda rs: [(rs[1], chunk("c", 1)), (rs[1], chunk("", 2, "length")), (rs[1], None)],
    )
    assert isinstance(engine, Submits)

    async def scenario() -> tuple[int, list[list[Any]]]:
        await engine.start()
        return await exchange(
            engine, [generate(1, prompt="hi"), generate(2, prompt="hi")], answers=2
        )

    status, frames = asyncio.run(scenario())
    assert status == 0
    first = [m[0] for m in frames if m[1] == 1]
    assert first == ["c", "c", "x"]  # the chunks before the error that ended the stream
    assert wire.decode_error(frames[[m[1] for m in frames].index(1) + 2][2]).message == "boom"
    assert [m[0] for m in frames if m[1] == 2] == ["c", "c", "e"]


def test_a_cancelled_generation_gets_no_more_frames() -> None:
    engine = ScriptedSubmitter(
        lambda rs: [],  # runs until cancelled
        # A step already under way when the cancel arrived still carries the first one.
        lambda rs: [(rs[0], chunk("late", 1)), (rs[1], chunk("x", 1, "stop")), (rs[1], None)],
    )

    async def scenario() -> tuple[int, list[list[Any]]]:
        await engine.start()
        first, then = [generate(1, prompt="long")], [["k", 1], generate(2, prompt="next")]
        return await exchange(engine, first, then, answers=1)

    status, frames = asyncio.run(scenario())
    assert status == 0
    assert engine.requests[0].cancelled  # the engine frees its slot at the next step
    assert [m[1] for m in frames if m[0] in ("c", "e")] == [2, 2]
