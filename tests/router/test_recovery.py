"""The router recovers by itself: loads that never finish, failed and crashed engines,
models too big for ``router.max_memory``, webhooks that cannot be delivered."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bastion.errors import ModelLoadError, ModelUnavailableError
from bastion.router import registry as registry_module
from bastion.router.webhook import Event, Webhook
from bastion.settings import RouterSettings
from tests.fakes import FakeBehaviour
from tests.router.helpers import Fleet, ask, registry, run, store, until


def test_a_load_that_never_finishes_ends_at_load_timeout_and_frees_the_claim(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        hanging = FakeBehaviour(hang_load=True)
        fleet = Fleet({"a": hanging})
        async with registry(tmp_path, ["a", "b"], fleet, load_timeout=0.3) as reg:
            with pytest.raises(ModelLoadError) as info:
                async with asyncio.timeout(10):
                    await reg.load("a")
            assert info.value.status == 503
            assert "router.load_timeout" in info.value.message
            assert reg.swapping is None  # the one change in progress is over
            assert reg.states()["a"]["state"] == "failed"
            assert fleet.of("a")[0].closed  # what it started is stopped
            hanging.hang_load = False
            async with asyncio.timeout(10):
                assert (await reg.load("a"))["state"] == "ready"
                assert (await reg.swap("b"))["state"] == "ready"
                assert await ask(reg, "a") == "ok"

    run(scenario)


def test_a_request_for_a_load_that_never_finishes_gets_503(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet({"a": FakeBehaviour(hang_load=True)})
        async with registry(tmp_path, ["a"], fleet, load_timeout=0.3) as reg:
            with pytest.raises(ModelUnavailableError):
                async with asyncio.timeout(10):
                    await reg.acquire("a")
            await until(lambda: reg.states()["a"]["state"] == "failed")
            assert fleet.of("a")[0].closed
            assert reg.swapping is None

    run(scenario)


def test_the_first_request_after_retry_failed_reloads_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        async with registry(tmp_path, ["a"], fleet, preload=["a"]) as reg:
            fleet.built[0].crash("the engine process died (signal 9)")
            await until(lambda: reg.states()["a"]["state"] == "failed")
            with pytest.raises(ModelUnavailableError):
                await reg.acquire("a")  # a fresh failure: 503 at once
            monkeypatch.setattr(registry_module, "RETRY_FAILED", 0.0)
            async with asyncio.timeout(10):
                assert await ask(reg, "a") == "ok"  # this request triggers the retry
            assert len(fleet.built) == 2
            assert fleet.built[0].closed
            assert reg.ready

    run(scenario)


def test_requests_during_a_restart_after_a_crash_get_503_with_retry_after(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        async with registry(tmp_path, ["a"], fleet, preload=["a"]) as reg:
            engine = fleet.built[0]
            assert reg.ready
            engine.crash("the engine process died (signal 9)")
            engine.restarting()
            await until(lambda: reg.states()["a"]["state"] == "starting")
            assert not reg.ready  # /ready answers 503 meanwhile
            with pytest.raises(ModelUnavailableError) as info:
                async with asyncio.timeout(10):  # not load_timeout (300 s)
                    await reg.acquire("a")
            assert info.value.status == 503
            assert int(info.value.headers()["Retry-After"]) >= 1
            assert "restarting" in info.value.message
            assert reg.states()["a"]["waiting"] == 0
            engine.finish_restart()
            await until(lambda: reg.ready)
            async with asyncio.timeout(10):
                assert await ask(reg, "a") == "ok"
            assert len(fleet.built) == 1  # the engine restarted itself: no reload

    run(scenario)


def test_a_first_load_in_progress_is_waited_for_not_refused(tmp_path: Path) -> None:
    """Only a restart after a crash is refused: a model loading for the first time is not."""

    async def scenario() -> None:
        fleet = Fleet({"a": FakeBehaviour(load_delay=0.2)})
        async with registry(tmp_path, ["a"], fleet) as reg:
            first = asyncio.create_task(ask(reg, "a"))
            await until(lambda: reg.states()["a"]["state"] == "starting")
            async with asyncio.timeout(10):
                assert await ask(reg, "a") == "ok"
                assert await first == "ok"

    run(scenario)


def test_a_restart_that_never_ends_is_replaced_by_a_reload(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        async with registry(tmp_path, ["a"], fleet, preload=["a"], load_timeout=0.2) as reg:
            engine = fleet.built[0]
            engine.crash()
            engine.restarting()  # and never ready

            async def until_served() -> str:
                while True:
                    try:
                        return await ask(reg, "a")
                    except ModelUnavailableError:
                        await asyncio.sleep(0.05)

            async with asyncio.timeout(10):
                assert await until_served() == "ok"
            assert len(fleet.built) == 2
            assert engine.closed

    run(scenario)


def test_a_model_bigger_than_max_memory_alone_is_refused_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        store(tmp_path, "big", b"x" * 4096)
        fleet = Fleet()
        async with registry(tmp_path, ["big"], fleet, max_memory=1000) as reg:
            for attempt in (reg.acquire("big"), reg.load("big"), reg.swap("big")):
                with pytest.raises(ModelUnavailableError) as info:
                    async with asyncio.timeout(10):  # not load_timeout (300 s)
                        await attempt
                assert info.value.status == 503
                assert "router.max_memory (1000 bytes)" in info.value.message
                assert "4.0 KiB" in info.value.message
            assert fleet.built == []
            assert reg.states()["big"]["waiting"] == 0
            assert reg.swapping is None

    run(scenario)


def test_a_malformed_webhook_url_is_logged_not_a_silent_task_death(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="bastion.router")

    async def scenario() -> None:
        # Accepted by urlsplit, refused by httpx's IDNA encoding only when it sends.
        hook = Webhook("http://xn--a.example/hook?token=not-logged", None, backoff=0.01)
        hook.send(Event("a", "load", 0.5))
        await until(lambda: "cannot deliver the load event of model a" in caplog.text)
        async with asyncio.timeout(10):
            await hook.close()

    run(scenario)
    assert "not-logged" not in caplog.text


def test_a_webhook_url_httpx_cannot_parse_is_refused_with_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = RouterSettings.model_construct(webhook_url="http://hooks.example/\x00?token=x1")
    assert Webhook.from_settings(settings) is None
    assert "router.webhook_url (http://hooks.example) cannot be used" in caplog.text
    assert "x1" not in caplog.text
