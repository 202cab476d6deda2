"""The OpenAI routes in process: unsupported parameters and unknown routes answer in the
OpenAI error envelope, never silently."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.stub_app import MODEL, client, running_app

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
TEXT = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
UNKNOWN = [
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/resp_1"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/chat/completions/extra"),
    ("GET", "/v1/assistants"),
    ("POST", "/v2/chat/completions"),
]


def send(tmp_path: Path, requests: list[tuple[str, str, Any]]) -> list[httpx.Response]:
    async def scenario() -> list[httpx.Response]:
        async with running_app(tmp_path / "home") as app, client(app, "127.0.0.1") as http:
            return [await http.request(m, path, json=body) for m, path, body in requests]

    return asyncio.run(scenario())


def assert_envelope(response: httpx.Response, status: int, param: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param


def test_unsupported_parameters_are_a_400_naming_them_on_both_routes(tmp_path: Path) -> None:
    fields = {
        "functions": [{"name": "f", "parameters": {}}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "required",
        "response_format": {"type": "json_object"},
        "logit_bias": {"1": 101},
    }
    requests = [
        ("POST", path, {**base, name: value})
        for name, value in fields.items()
        for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", TEXT))
    ]
    responses = send(tmp_path, requests)
    for (_, _, body), response in zip(requests, responses, strict=True):
        (name,) = set(body) - set(CHAT) - set(TEXT)
        assert_envelope(response, 400, name)


def test_logit_bias_and_harmless_parameters_are_served(tmp_path: Path) -> None:
    harmless = {"logit_bias": {"5": -100}, "user": "u", "metadata": {"a": "b"}, "store": False}
    responses = send(
        tmp_path,
        [
            ("POST", "/v1/chat/completions", {**CHAT, **harmless}),
            ("POST", "/v1/completions", {**TEXT, **harmless}),
        ],
    )
    assert [r.status_code for r in responses] == [200, 200]


@pytest.mark.parametrize(("method", "path"), UNKNOWN)
def test_unknown_routes_are_a_404_in_the_openai_envelope(
    tmp_path: Path, method: str, path: str
) -> None:
    (response,) = send(tmp_path, [(method, path, {"model": MODEL, "input": "hi"})])
    assert_envelope(response, 404, None)
    assert response.json()["error"]["code"] == "not_found"
