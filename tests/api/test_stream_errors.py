"""Failures after streaming began: an SSE ``error`` event, then ``[DONE]``.

The real engine cannot be made to fail mid-stream on demand, so these tests serve the real app
in process over the shared fake engine, told to fail after its first chunk.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import openai
import pytest

from bastion.errors import EngineError
from tests.api.stub_app import MODEL, client, running_app
from tests.fakes import FakeBehaviour

SECRET_DETAIL = "internal-detail-0xdeadbeef"
FORGED = "boom\nCRITICAL forged line \x1b[31mred\x00"
LOOPBACK = "127.0.0.1"
FIRST = "Hello "
"""The fake's first chunk: its first word, followed by the space before the next."""


BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def failing(error: Exception) -> FakeBehaviour:
    return FakeBehaviour(reply="Hello world", fail_with=error, fail_after=1)


async def _stream(home: Path, error: Exception) -> tuple[list[str], httpx.Response]:
    """The SSE lines of one streamed chat over an engine failing after one chunk, and the
    response to the same chat not streamed."""
    async with running_app(home, behaviour=failing(error)) as app, client(app, LOOPBACK) as http:
        response = await http.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        plain = await http.post("/v1/chat/completions", json={**BODY, "stream": False})
        return [line for line in response.text.splitlines() if line], plain


def sse_lines(home: Path, error: Exception) -> list[str]:
    return asyncio.run(_stream(home, error))[0]


def test_error_after_first_chunk_is_an_error_event_then_done(home: Path) -> None:
    lines = sse_lines(home, EngineError("the engine failed to decode"))
    assert lines[0].startswith("data: {")
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["content"] == FIRST
    assert lines[-3] == "event: error"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "engine_error"
    assert error["type"] == "server_error"
    assert error["message"] == "the engine failed to decode"
    assert lines[-1] == "data: [DONE]"


def test_openai_sdk_raises_on_the_error_event(home: Path) -> None:
    behaviour = failing(EngineError("the engine failed to decode"))

    async def scenario() -> list[str | None]:
        async with running_app(home, behaviour=behaviour) as app, client(app, LOOPBACK) as http:
            sdk = openai.AsyncOpenAI(
                base_url="http://localhost/v1", api_key="unused", max_retries=0, http_client=http
            )
            stream = await sdk.chat.completions.create(
                model=MODEL, stream=True, messages=[{"role": "user", "content": "hi"}]
            )
            received: list[str | None] = []

            async def read_all() -> None:
                async for chunk in stream:  # received keeps what came before the error
                    received.append(chunk.choices[0].delta.content)

            with pytest.raises(openai.APIError, match="the engine failed to decode"):
                await read_all()
            return received

    assert asyncio.run(scenario()) == [FIRST]


def test_unexpected_exception_text_never_reaches_the_client(home: Path) -> None:
    lines, plain = asyncio.run(_stream(home, RuntimeError(SECRET_DETAIL)))
    assert "event: error" in lines
    assert lines[-1] == "data: [DONE]"
    assert not any(SECRET_DETAIL in line for line in lines)
    assert plain.status_code == 500
    assert SECRET_DETAIL not in plain.text
    assert set(plain.json()["error"]) == {"message", "type", "param", "code"}


def test_an_unexpected_error_mid_stream_is_logged_escaped(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        assert "event: error" in sse_lines(home, RuntimeError(FORGED))
    text = caplog.text
    assert "stream failed after it began" in text
    assert "RuntimeError: boom\\nCRITICAL forged line \\x1b[31mred\\x00" in text
    assert "\nCRITICAL forged" not in text
    assert "\x1b" not in text
    assert "\x00" not in text
