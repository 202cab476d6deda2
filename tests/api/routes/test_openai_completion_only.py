"""OpenAI routes over a completion-only model: chat is refused by name, completions serve.

The stand-in engine takes its capability from the verified model, as the real one does, so
these tests also cover catalog entry -> ``LocalModel`` -> ``ModelInfo.chat`` -> route.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bastion.api.app import create_app
from bastion.engine.base import Chunk, GenerationParams
from bastion.settings import Settings
from bastion.store.package import LocalModel
from tests.api.stub_app import MODEL, StubEngine, client, running_app, store_model

BASE = "tiny-base"
USER = [{"role": "user", "content": "What is 2+2?"}]


class CapabilityStub(StubEngine):
    """Chats only when its model has a template; records what reached it."""

    def __init__(self, model: LocalModel) -> None:
        super().__init__(model)
        self._info = dataclasses.replace(self._info, chat=not model.completion_only)
        self.seen: list[GenerationParams] = []

    async def generate(self, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        self.seen.append(params)
        yield Chunk("ok", prompt_tokens=1, completion_tokens=1)


def serve_base(home: Path, requests: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
    """Serve BASE (catalog-tagged ``base``) and send ``(method, path, body)`` in turn."""
    store_model(home, BASE)
    catalog = home / "catalog.yaml"
    data = yaml.safe_load(catalog.read_text())
    data["models"][BASE]["tags"] = ["small", "base"]
    catalog.write_text(yaml.safe_dump(data))
    engines: list[CapabilityStub] = []

    def factory(local: LocalModel) -> CapabilityStub:
        engines.append(CapabilityStub(local))
        return engines[-1]

    async def scenario() -> list[httpx.Response]:
        app = create_app(Settings(server={"default_model": BASE}), home, factory)
        async with app.router.lifespan_context(app):
            await app.state.registry.wait_loaded()
            async with client(app, "127.0.0.1") as http:
                return [await http.request(m, p, json=b or None) for m, p, b in requests]

    responses = asyncio.run(scenario())
    return [responses, engines[0].seen]


@pytest.mark.parametrize(
    "body",
    [
        {"model": BASE, "messages": USER},
        {"messages": USER},  # the default model is the base one
        {"model": BASE, "messages": USER, "stream": True},
        {
            "model": BASE,
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        {"model": BASE, "messages": [{"role": "system", "content": "Be terse."}, *USER]},
    ],
)
def test_chat_with_a_base_model_is_a_400_naming_model_and_pointing_to_completions(
    tmp_path: Path, body: dict[str, Any]
) -> None:
    (response,), seen = serve_base(tmp_path, [("POST", "/v1/chat/completions", body)])
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")  # not an SSE stream
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_chat",
        "model",
        "invalid_request_error",
    )
    assert BASE in error["message"]
    assert "/v1/completions" in error["message"]
    assert seen == []  # the engine was never asked


def test_a_base_model_still_completes_and_says_it_does_not_chat(tmp_path: Path) -> None:
    (text, streamed, models, card), seen = serve_base(
        tmp_path,
        [
            ("POST", "/v1/completions", {"model": BASE, "prompt": "2+2="}),
            ("POST", "/v1/completions", {"prompt": "2+2=", "stream": True}),
            ("GET", "/v1/models", {}),
            ("GET", f"/v1/models/{BASE}", {}),
        ],
    )
    assert text.status_code == 200
    assert text.json()["choices"][0]["text"] == "ok"
    assert streamed.status_code == 200
    assert "data: [DONE]" in streamed.text
    assert models.json()["data"][0]["capabilities"] == {"chat": False, "completion": True}
    assert card.json()["capabilities"]["chat"] is False
    assert [p.prompt for p in seen] == ["2+2=", "2+2="]


def test_a_chat_model_chats_and_says_so(tmp_path: Path) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with running_app(tmp_path) as app, client(app, "127.0.0.1") as http:
            chat = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
            return chat, await http.get("/v1/models")

    chat, models = asyncio.run(scenario())
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "ok"
    assert models.json()["data"][0]["capabilities"] == {"chat": True, "completion": True}
