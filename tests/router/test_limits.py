"""What stays loaded: idle_ttl, max_loaded and max_memory (least recently used idle model
first), and never a model with requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bastion.engine.base import EngineState, GenerationParams
from bastion.errors import ModelConflictError, ModelUnavailableError
from tests.fakes import FakeBehaviour
from tests.router.helpers import Fleet, ask, registry, run, until


def loaded(states: dict[str, dict[str, object]]) -> set[str]:
    return {name for name, state in states.items() if state["state"] == "ready"}


def test_idle_ttl_unloads_a_model_nobody_used_and_its_engine_is_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        async with registry(tmp_path, ["a", "b"], fleet, idle_ttl=0.2) as reg:
            await ask(reg, "a")
            engine = fleet.of("a")[0]
            await until(lambda: reg.states()["a"]["state"] == "stopped")
            assert engine.lifecycle.state is EngineState.STOPPED
            assert await ask(reg, "a") == "ok"  # loads again on demand
            assert len(fleet.of("a")) == 2

    run(scenario)


def test_idle_ttl_waits_for_a_long_request_to_end(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet({"a": FakeBehaviour(token_delay=0.05)})
        async with registry(tmp_path, ["a"], fleet, idle_ttl=0.1) as reg:
            text = await ask(reg, "a", words=12)  # ~0.6 s, far past the ttl
            assert text.split() == ["ok"] * 12
            assert fleet.of("a")[0].generated == 1
            await until(lambda: reg.states()["a"]["state"] == "stopped")

    run(scenario)


def test_max_loaded_unloads_the_least_recently_used_idle_model(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        async with registry(tmp_path, ["a", "b", "c"], fleet, max_loaded=2) as reg:
            await ask(reg, "a")
            await ask(reg, "b")
            await ask(reg, "a")  # b is now the least recently used
            await ask(reg, "c")
            assert loaded(reg.states()) == {"a", "c"}
            assert fleet.of("b")[0].lifecycle.state is EngineState.STOPPED
            assert reg.swaps == 1

    run(scenario)


def test_max_memory_unloads_as_many_idle_models_as_needed(tmp_path: Path) -> None:
    async def scenario() -> None:
        small, big = FakeBehaviour(memory=1000), FakeBehaviour(memory=2500)
        fleet = Fleet({"a": small, "b": small, "c": big})
        async with registry(tmp_path, ["a", "b", "c"], fleet, max_memory=3000) as reg:
            await ask(reg, "a")
            await ask(reg, "b")
            assert loaded(reg.states()) == {"a", "b"}
            assert reg.states()["a"]["memory"] == 1000
            # c's size is unknown before its first load (its file is tiny): it loads beside
            # them, and its real size is known from then on
            await ask(reg, "c")
            await reg.unload("c")
            await ask(reg, "a")
            await ask(reg, "b")
            await ask(reg, "c")  # 2500 + 1000 + 1000 > 3000: both small ones go
            assert loaded(reg.states()) == {"c"}

    run(scenario)


def test_a_busy_model_is_never_unloaded_to_make_room(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet({"a": FakeBehaviour(token_delay=0.02)})
        async with registry(
            tmp_path, ["a", "b"], fleet, max_loaded=1, swap_after=3600, load_timeout=0.3
        ) as reg:
            long = asyncio.create_task(ask(reg, "a", words=100))
            await until(lambda: fleet.of("a") != [] and fleet.of("a")[0].running == 1)
            with pytest.raises(ModelUnavailableError):
                await reg.acquire("b")  # waits for its turn, then load_timeout
            with pytest.raises(ModelConflictError):
                await reg.load("b")  # only a busy model could make room
            assert fleet.of("b") == []
            assert (await long).split() == ["ok"] * 100
            assert fleet.of("a")[0].lifecycle.state is EngineState.READY

    run(scenario)


def test_a_model_queued_for_is_not_unloaded_while_another_waits(tmp_path: Path) -> None:
    """A held (acquired, not yet generating) model counts as busy too."""

    async def scenario() -> None:
        fleet = Fleet()
        async with registry(tmp_path, ["a", "b"], fleet, max_loaded=1, swap_after=0.05) as reg:
            held = await reg.acquire("a")
            waiting = asyncio.create_task(ask(reg, "b"))
            await asyncio.sleep(0.3)  # well past swap_after: a drains but is still held
            assert not waiting.done()
            assert reg.states()["a"]["state"] == "ready"
            chunks = [c async for c in held.generate(GenerationParams(prompt="x"))]
            held.release()
            assert chunks[-1].finish_reason == "stop"
            assert await waiting == "ok"
            assert loaded(reg.states()) == {"b"}

    run(scenario)
