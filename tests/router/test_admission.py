"""Admission: a bounded wait queue in front of the engine, then 429 with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from bastion.engine.base import Chunk
from bastion.errors import TooManyRequestsError
from bastion.router.admission import Admission


async def held(gate: asyncio.Event) -> AsyncGenerator[Chunk, None]:
    """A generation that waits for ``gate`` before its only chunk."""
    await gate.wait()
    yield Chunk("x", 1, 1, finish_reason="stop")


def test_requests_beyond_running_plus_queue_get_429_with_retry_after() -> None:
    async def scenario() -> None:
        admission = Admission(lambda: 2, max_waiting=1)  # the engine runs two at a time
        gate = asyncio.Event()
        runs = [admission.run(held(gate)) for _ in range(3)]
        tasks = [asyncio.create_task(anext(run)) for run in runs]
        await asyncio.sleep(0)
        assert admission.in_flight == 3
        assert admission.waiting == 1
        with pytest.raises(TooManyRequestsError) as info:
            await anext(admission.run(held(gate)))
        assert info.value.status == 429
        assert int(info.value.headers()["Retry-After"]) >= 1
        gate.set()
        chunks = await asyncio.gather(*tasks)  # the queued ones still complete
        assert [c.text for c in chunks] == ["x"] * 3
        for run in runs:
            await run.aclose()
        assert admission.in_flight == 0

    asyncio.run(scenario())


def test_a_refused_request_does_not_take_a_place() -> None:
    async def scenario() -> None:
        admission = Admission(lambda: min(admission.in_flight, 1), max_waiting=1)
        gate = asyncio.Event()
        runs = [admission.run(held(gate)) for _ in range(2)]  # one runs, one waits
        tasks = [asyncio.create_task(anext(run)) for run in runs]
        await asyncio.sleep(0)
        for _ in range(3):
            with pytest.raises(TooManyRequestsError):
                await anext(admission.run(held(gate)))
        assert admission.in_flight == 2
        gate.set()
        await asyncio.gather(*tasks)
        for run in runs:
            await run.aclose()
        assert admission.in_flight == 0

    asyncio.run(scenario())
