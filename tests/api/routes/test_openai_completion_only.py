"""OpenAI routes over a completion-only model: chat is refused by name, completions serve.

The fake engine takes its capability from the model spec, as the real one does from the
verified model, so these tests also cover catalog entry -> ``ModelSpec`` -> ``ModelInfo.chat``
-> route.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bastion.settings import Settings
from tests.api.stub_app import MODEL, client, fake_app, running_app, store_model

BASE = "tiny-base"
USER = [{"role": "user", "content": "What is 2+2?"}]


def serve_base(home: Path, requests: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
    """Serve BASE (catalog-tagged ``base``) and send ``(method, path, body)`` in turn."""
    store_model(home, BASE)
    catalog = home / "catalog.yaml"
    data = yaml.safe_load(catalog.read_text())
    data["models"][BASE]["tags"] = ["small", "base"]
    catalog.write_text(yaml.safe_dump(data))
    app, engines = fake_app(Settings(server={"default_model": BASE}), home)

    async def scenario() -> list[httpx.Response]:
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
            # One token: the fake repeats its one-word reply to fill max_tokens (16 here).
            ("POST", "/v1/completions", {"model": BASE, "prompt": "2+2=", "max_tokens": 1}),
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
