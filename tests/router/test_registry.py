"""The registry: every catalog model with its state, load on demand, failures answered fast."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bastion.engine.base import EngineState
from bastion.errors import (
    ModelNotFoundError,
    ModelUnavailableError,
    SwapInProgressError,
    TooManyRequestsError,
)
from tests.fakes import FakeBehaviour
from tests.router.helpers import Fleet, ask, registry, run, until


def test_every_catalog_model_is_listed_and_one_loads_on_its_first_request(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        async with registry(tmp_path, ["a", "b"], fleet) as reg:
            states = reg.states()
            assert {states["a"]["state"], states["b"]["state"]} == {"stopped"}
            assert "smollm2-135m-instruct" in states  # built-ins are in the catalog too
            assert await ask(reg, "b") == "ok"
            assert reg.states()["b"]["state"] == "ready"
            assert reg.states()["a"]["state"] == "stopped"
            assert [e.spec.name for e in fleet.built] == ["b"]
            spec = fleet.built[0].spec
            assert spec.kind == "llamacpp"
            assert spec.weights is not None
            assert spec.weights.name == "b.gguf"
            assert spec.digest  # the manifest's digest of the verified file

    run(scenario)


def test_unknown_model_is_404(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with registry(tmp_path, ["a"], Fleet()) as reg:
            with pytest.raises(ModelNotFoundError) as info:
                await reg.acquire("nope")
            assert info.value.status == 404
            assert info.value.param == "model"

    run(scenario)


def test_preload_makes_ready_and_the_default_model_answers_none(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with registry(tmp_path, ["a", "b"], Fleet(), preload=["a"]) as reg:
            assert reg.ready
            assert reg.states()["a"]["state"] == "ready"
            served = await reg.acquire(None)
            assert served.info.name == "a"
            served.release()

    run(scenario)


def test_a_failed_preload_is_not_ready_and_requests_get_503_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet({"a": FakeBehaviour(fail_load="the weights are cursed")})
        async with registry(tmp_path, ["a"], fleet, preload=["a"]) as reg:
            assert not reg.ready
            status = reg.states(detail=True)["a"]
            assert status["state"] == "failed"
            assert status["reason"] == "the weights are cursed"
            assert "reason" not in reg.states()["a"]  # the public view keeps it to operators
            with pytest.raises(ModelUnavailableError) as info:
                await reg.acquire("a")
            assert info.value.status == 503
            assert int(info.value.headers()["Retry-After"]) >= 1
            assert "/api/status" in info.value.message
            assert "cursed" not in info.value.message
            assert len(fleet.built) == 1  # no reload per request

    run(scenario)


def test_a_request_waiting_for_a_load_that_fails_gets_503_not_a_hang(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet({"a": FakeBehaviour(load_delay=0.05, fail_load="no")})
        async with registry(tmp_path, ["a"], fleet, load_timeout=60) as reg:
            with pytest.raises(ModelUnavailableError):
                await asyncio.wait_for(reg.acquire("a"), 30)

    run(scenario)


def test_a_crashed_engine_answers_503_and_shows_failed(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        async with registry(tmp_path, ["a"], fleet, preload=["a"]) as reg:
            assert reg.ready
            fleet.built[0].crash("the engine process died (signal 9)")
            await until(lambda: reg.states()["a"]["state"] == "failed")
            assert not reg.ready
            with pytest.raises(ModelUnavailableError) as info:
                await reg.acquire("a")
            assert "Retry-After" in info.value.headers()
            assert "signal 9" in str(reg.states(detail=True)["a"]["reason"])
            # an operator's load replaces the failed engine at once
            result = await reg.load("a")
            assert result["state"] == "ready"
            assert await ask(reg, "a") == "ok"
            assert fleet.built[0].closed
            assert len(fleet.built) == 2

    run(scenario)


def test_a_load_slower_than_load_timeout_is_503(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet({"a": FakeBehaviour(load_delay=30)})
        async with registry(tmp_path, ["a"], fleet, load_timeout=0.2) as reg:
            with pytest.raises(ModelUnavailableError) as info:
                async with asyncio.timeout(10):
                    await reg.acquire("a")
            assert info.value.status == 503
            assert reg.states()["a"]["waiting"] == 0  # the request left the queue
            # the load itself is given up too (not left starting forever)
            await until(lambda: reg.states()["a"]["state"] == "failed")
            assert "router.load_timeout" in str(reg.states(detail=True)["a"]["reason"])
            assert fleet.built[0].closed

    run(scenario)


def test_state_listener_hears_every_state_of_a_load_and_an_unload(tmp_path: Path) -> None:
    async def scenario() -> None:
        heard: list[tuple[str, str, str]] = []
        async with registry(tmp_path, ["a"], Fleet()) as reg:
            reg._on_state = lambda *event: heard.append(event)
            await ask(reg, "a")
            await reg.unload("a")
        assert [s for m, _, s in heard if m == "a"] == [
            "starting",
            "ready",
            "stopping",
            "stopped",
        ]
        assert all(kind == "llamacpp" for _, kind, _ in heard)

    run(scenario)


def test_one_swap_at_a_time_the_second_gets_409_naming_the_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet({"b": FakeBehaviour(load_delay=0.3)})
        async with registry(tmp_path, ["a", "b"], fleet, max_loaded=1, preload=["a"]) as reg:
            first = asyncio.create_task(reg.swap("b"))
            await until(lambda: reg.swapping is not None)
            with pytest.raises(SwapInProgressError) as info:
                await reg.swap("a")
            assert info.value.status == 409
            assert "swapping in b" in info.value.message
            result = await first
            assert result["loaded"]["model"] == "b"
            assert [u["model"] for u in result["unloaded"]] == ["a"]
            states = reg.states()
            assert (states["a"]["state"], states["b"]["state"]) == ("stopped", "ready")
            assert reg.swapping is None
            assert (await reg.swap("a"))["unloaded"][0]["model"] == "b"  # free again

    run(scenario)


def test_unload_refuses_a_busy_model_and_unloads_an_idle_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        async with registry(tmp_path, ["a"], fleet, preload=["a"]) as reg:
            served = await reg.acquire("a")
            with pytest.raises(Exception, match="queued requests") as info:
                await reg.unload("a")
            assert getattr(info.value, "status", None) == 409
            served.release()
            result = await reg.unload("a")
            assert result["unloaded"][0]["model"] == "a"
            assert reg.states()["a"]["state"] == "stopped"
            assert fleet.built[0].lifecycle.state is EngineState.STOPPED
            assert reg.ready  # unloaded by the router, it loads again on demand
            assert await ask(reg, "a") == "ok"

    run(scenario)


def test_requests_waiting_for_a_load_count_against_max_queue(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet({"a": FakeBehaviour(load_delay=0.3)})
        async with registry(tmp_path, ["a"], fleet, max_queue=2) as reg:
            waiting = [asyncio.create_task(ask(reg, "a")) for _ in range(2)]
            await until(lambda: reg.states()["a"]["waiting"] == 2)
            with pytest.raises(TooManyRequestsError) as info:
                await reg.acquire("a")
            assert info.value.status == 429
            assert "Retry-After" in info.value.headers()
            assert await asyncio.gather(*waiting) == ["ok", "ok"]  # the queued ones are served

    run(scenario)
