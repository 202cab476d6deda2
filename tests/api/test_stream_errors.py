"""Failures after streaming began: an SSE ``error`` event, then ``[DONE]``.

The real engine cannot be made to fail mid-stream on demand, so these tests serve the real
app over a real socket with a stand-in engine that yields one chunk and then fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from bastion.api.app import create_app
from bastion.engine.base import Chunk, GenerationParams, ModelInfo
from bastion.errors import EngineError
from bastion.settings import load_settings
from bastion.store.package import LocalModel

SECRET_DETAIL = "internal-detail-0xdeadbeef"


class FailingEngine:
    """Yields one chunk, then raises the error it was built with."""

    def __init__(self, model: LocalModel, error: Exception) -> None:
        self._info = ModelInfo(model.name, model.sha256, 2048, int(time.time()))
        self._error = error

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def ready(self) -> bool:
        return True

    @property
    def running(self) -> int:
        return 0

    async def start(self) -> None:
        return None

    async def generate(self, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        yield Chunk("Hello", prompt_tokens=3, completion_tokens=1)
        await asyncio.sleep(0)
        raise self._error

    async def close(self) -> None:
        return None


def serve_app(home: Path, error: Exception) -> Iterator[str]:
    app = create_app(load_settings(), home, lambda model: FailingEngine(model, error))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 60
        while not server.started or httpx.get(f"{base}/ready").status_code != 200:
            assert time.monotonic() < deadline, "app never became ready"
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def engine_error_app(home: Path) -> Iterator[str]:
    yield from serve_app(home, EngineError("the engine failed to decode"))


@pytest.fixture
def crash_app(home: Path) -> Iterator[str]:
    yield from serve_app(home, RuntimeError(SECRET_DETAIL))


FORGED = "boom\nCRITICAL forged line \x1b[31mred\x00"


@pytest.fixture
def forging_app(home: Path) -> Iterator[str]:
    yield from serve_app(home, RuntimeError(FORGED))


BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def sse_lines(base: str) -> list[str]:
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=BODY, timeout=30) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def test_error_after_first_chunk_is_an_error_event_then_done(engine_error_app: str) -> None:
    lines = sse_lines(engine_error_app)
    assert lines[0].startswith("data: {")
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["content"] == "Hello"
    assert lines[-3:-1][0] == "event: error"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "engine_error"
    assert error["type"] == "server_error"
    assert lines[-1] == "data: [DONE]"


def test_openai_sdk_raises_on_the_error_event(engine_error_app: str) -> None:
    client = openai.OpenAI(base_url=f"{engine_error_app}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    received = []
    with pytest.raises(openai.APIError, match="the engine failed to decode"):
        received.extend(chunk.choices[0].delta.content for chunk in stream)
    assert received == ["Hello"]


def test_unexpected_exception_text_never_reaches_the_client(crash_app: str) -> None:
    lines = sse_lines(crash_app)
    assert "event: error" in lines
    assert lines[-1] == "data: [DONE]"
    assert not any(SECRET_DETAIL in line for line in lines)
    plain = httpx.post(
        f"{crash_app}/v1/chat/completions", json={**BODY, "stream": False}, timeout=30
    )
    assert plain.status_code == 500
    assert SECRET_DETAIL not in plain.text
    assert set(plain.json()["error"]) == {"message", "type", "param", "code"}


def test_an_unexpected_error_mid_stream_is_logged_escaped(
    forging_app: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        assert "event: error" in sse_lines(forging_app)
    text = caplog.text
    assert "stream failed after it began" in text
    assert "RuntimeError: boom\\nCRITICAL forged line \\x1b[31mred\\x00" in text
    assert "\nCRITICAL forged" not in text
    assert "\x1b" not in text
    assert "\x00" not in text
