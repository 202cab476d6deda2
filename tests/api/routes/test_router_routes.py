"""The router over HTTP: every model listed with its state, on-demand loads, /api/swap,
load/unload for operators, the state in /metrics. In process, over the shared fake engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
from fastapi import FastAPI

from bastion.settings import Settings
from tests.api.stub_app import MODEL, client, fake_app, store_model
from tests.fakes import FakeBehaviour, FakeEngine
from tests.router.helpers import until

OTHER = "other"
LOOPBACK = "127.0.0.1"


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


@asynccontextmanager
async def two_models(
    home: Path, behaviour: FakeBehaviour | None = None, **router: Any
) -> AsyncIterator[tuple[FastAPI, list[FakeEngine]]]:
    """The app with MODEL (preloaded) and OTHER in the catalog."""
    store_model(home)
    store_model(home, OTHER, b"other stand-in weights")
    settings = Settings(server={"default_model": MODEL}, router=router)
    app, engines = fake_app(settings, home, behaviour)
    async with app.router.lifespan_context(app):
        await app.state.registry.wait_loaded()
        yield app, engines


def test_every_model_is_listed_with_its_state_and_loads_on_its_first_request(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with two_models(tmp_path) as (app, engines), client(app, LOOPBACK) as http:
            sdk = openai.AsyncOpenAI(
                base_url="http://localhost/v1", api_key="unused", max_retries=0, http_client=http
            )
            cards = {m.id: m for m in (await sdk.models.list()).data}
            assert cards[MODEL].model_extra is not None
            assert cards[MODEL].model_extra["state"] == "ready"
            assert cards[MODEL].model_extra["digest"].startswith("sha256:")
            assert cards[OTHER].model_extra == {"state": "stopped"}
            assert "smollm2-135m-instruct" in cards  # the whole catalog, not just the store
            card = (await http.get(f"/v1/models/{OTHER}")).json()
            assert card["state"] == "stopped"

            reply = await sdk.chat.completions.create(**chat(OTHER))
            assert reply.model == OTHER
            assert reply.system_fingerprint is not None
            card = (await http.get(f"/v1/models/{OTHER}")).json()
            assert card["state"] == "ready"
            assert card["system_fingerprint"] == reply.system_fingerprint
            assert [e.spec.name for e in engines] == [MODEL, OTHER]
            assert (await http.get("/v1/models/nope")).status_code == 404
            missing = await http.post("/v1/chat/completions", json=chat("nope"))
            assert missing.status_code == 404
            assert missing.json()["error"]["param"] == "model"

    asyncio.run(scenario())


def test_a_failed_model_is_503_with_retry_after_and_ready_follows(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_models(tmp_path) as (app, engines), client(app, LOOPBACK) as http:
            assert (await http.get("/ready")).status_code == 200
            engines[0].crash("the engine process died")
            await asyncio.sleep(0)
            ready = await http.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["models"][MODEL]["state"] == "failed"
            response = await http.post("/v1/chat/completions", json=chat(MODEL))
            assert response.status_code == 503
            assert int(response.headers["Retry-After"]) >= 1
            assert "died" not in response.text  # the reason is for operators
            status = (await http.get("/api/status")).json()
            assert status["models"][MODEL]["reason"] == "the engine process died"
            # the other model is unaffected
            assert (await http.post("/v1/chat/completions", json=chat(OTHER))).status_code == 200

    asyncio.run(scenario())


def test_swap_unloads_what_must_go_and_loads_the_model(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            two_models(tmp_path, max_loaded=1) as (app, _),
            client(app, LOOPBACK) as http,
        ):
            response = await http.post("/api/swap", json={"model": OTHER})
            assert response.status_code == 200, response.text
            result = response.json()
            assert result["loaded"]["model"] == OTHER
            assert [u["model"] for u in result["unloaded"]] == [MODEL]
            assert result["seconds"] >= 0
            states = (await http.get("/api/status")).json()["models"]
            assert (states[MODEL]["state"], states[OTHER]["state"]) == ("stopped", "ready")
            again = (await http.post("/api/swap", json={"model": OTHER})).json()
            assert again["loaded"] is None  # already there: nothing to do
            bad = await http.post("/api/swap", json={"name": OTHER})
            assert bad.status_code == 400
            assert (await http.post("/api/swap", json={"model": "nope"})).status_code == 404

    asyncio.run(scenario())


def test_a_second_swap_while_one_runs_is_409_naming_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        slow = FakeBehaviour(load_delay=0.3)
        async with (
            two_models(tmp_path, slow, max_loaded=1) as (app, _),
            client(app, LOOPBACK) as http,
        ):
            first = asyncio.create_task(http.post("/api/swap", json={"model": OTHER}))
            await until(lambda: app.state.registry.swapping is not None)
            second = await http.post("/api/swap", json={"model": MODEL})
            assert second.status_code == 409
            assert second.json()["error"]["code"] == "swap_in_progress"
            assert f"swapping in {OTHER}" in second.json()["error"]["message"]
            status = (await http.get("/api/status")).json()
            assert status["router"]["swapping"] == f"swapping in {OTHER}"
            assert (await first).status_code == 200

    asyncio.run(scenario())


def test_operators_load_and_unload_and_a_busy_model_is_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_models(tmp_path) as (app, engines), client(app, LOOPBACK) as http:
            loaded = await http.post(f"/api/models/{OTHER}/load")
            assert loaded.status_code == 200
            assert loaded.json()["state"] == "ready"
            unloaded = await http.post(f"/api/models/{OTHER}/unload")
            assert unloaded.json()["unloaded"][0]["model"] == OTHER
            assert engines[1].lifecycle.state.value == "stopped"
            held = await app.state.registry.acquire(MODEL)
            busy = await http.post(f"/api/models/{MODEL}/unload")
            assert busy.status_code == 409
            held.release()
            assert (await http.post(f"/api/models/{MODEL}/unload")).status_code == 200
            # the catalog routes see the new states: a stopped model may be removed
            assert (await http.delete(f"/api/models/{OTHER}")).status_code == 200

    asyncio.run(scenario())


def test_status_and_metrics_report_the_router(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, Any], str]:
        async with (
            two_models(tmp_path, max_loaded=1, idle_ttl=600) as (app, _),
            client(app, LOOPBACK) as http,
        ):
            await http.post("/api/swap", json={"model": OTHER})
            status = (await http.get("/api/status")).json()
            metrics = (await http.get("/metrics")).text
            return status, metrics

    status, metrics = asyncio.run(scenario())
    assert status["max_queue"] == 64
    router = status["router"]
    assert (router["max_loaded"], router["idle_ttl"], router["swaps"]) == (1, 600, 1)
    assert router["preload"] == [MODEL]
    assert status["models"][OTHER]["loads"] == 1
    assert f'bastion:model_state{{model="{OTHER}",state="ready"}} 1.0' in metrics
    assert f'bastion:model_state{{model="{MODEL}",state="ready"}} 0.0' in metrics
    assert f'bastion:model_state{{model="{MODEL}",state="stopped"}} 1.0' in metrics
    assert "bastion:model_swaps 1.0" in metrics


def test_a_request_whose_client_leaves_while_its_model_loads_leaves_the_queue(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        slow = FakeBehaviour(load_delay=0.5)
        async with two_models(tmp_path, slow) as (app, _):
            registry = app.state.registry
            transport = httpx.ASGITransport(app=app, client=(LOOPBACK, 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as h:
                request = asyncio.create_task(h.post("/v1/chat/completions", json=chat(OTHER)))
                await until(lambda: registry.states()[OTHER]["waiting"] == 1)
                request.cancel()  # the ASGI transport sends http.disconnect
                await asyncio.gather(request, return_exceptions=True)
            await until(lambda: registry.states()[OTHER]["waiting"] == 0)

    asyncio.run(scenario())


def test_a_forced_removal_unloads_the_model_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with two_models(tmp_path) as (app, engines), client(app, LOOPBACK) as http:
            assert (await http.post(f"/api/models/{OTHER}/load")).status_code == 200
            assert (await http.delete(f"/api/models/{OTHER}")).status_code == 409
            assert (await http.delete(f"/api/models/{OTHER}?force=true")).status_code == 200
            assert engines[-1].lifecycle.state.value == "stopped"
            assert OTHER not in app.state.registry.states()

    asyncio.run(scenario())
