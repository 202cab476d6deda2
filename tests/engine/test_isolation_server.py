"""The engine process's ``Server`` in this process, over a socket pair, with the stand-in
engine: the path for engines without ``submit`` (a task per generation forwarding chunks).
The embedded engine's own path (a step's frames written in one callback) runs in a real child
in test_isolation.py and test_conformance.py."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from bastion.engine.base import GenerationParams, ModelSpec
from bastion.engine.isolation import wire
from bastion.engine.isolation.child import Server, Submits
from tests.fakes import FakeBehaviour, FakeEngine


async def exchange(engine: FakeEngine, *requests: list[Any]) -> tuple[int, list[list[Any]]]:
    """Send ``requests`` (and then close) to a ``Server`` of ``engine``; what came back."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=theirs)
    serving = asyncio.create_task(Server(engine, reader, writer).serve())
    parent_reader, parent_writer = await asyncio.open_unix_connection(sock=ours)
    for request in requests:
        parent_writer.write(wire.frame(request))
    answered: list[list[Any]] = []
    while sum(1 for m in answered if m[0] in ("e", "x")) < len(requests):
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
            engine, generate(1, prompt="hi", max_tokens=3), generate(2, prompt="x " * 5000)
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
