"""The load/unload webhook: signed with HMAC-SHA256 of the body, retried, never blocking."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from bastion.router.webhook import SIGNATURE_HEADER, Webhook
from bastion.settings import RouterSettings
from tests.router.helpers import Fleet, ask, registry, run, until

SECRET = b"correct horse battery staple"


class Receiver:
    """A tiny HTTP server on a free loopback port; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines if x)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.received.append((headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook?token=not-logged"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def verified(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], expected)
    event: dict[str, Any] = json.loads(body)
    return event


def test_each_load_and_unload_is_posted_signed(tmp_path: Path) -> None:
    async def scenario() -> None:
        receiver = Receiver()
        async with receiver as url:
            hook = Webhook(url, SECRET, backoff=0.01)
            async with registry(tmp_path, ["a"], Fleet(), webhook=hook) as reg:
                await ask(reg, "a")
                await reg.unload("a")
                await until(lambda: len(receiver.received) == 2)
        events = [verified(h, b) for h, b in receiver.received]
        assert [(e["model"], e["action"], e["result"]) for e in events] == [
            ("a", "load", "ok"),
            ("a", "unload", "ok"),
        ]
        assert all(e["duration_seconds"] >= 0 and e["time"].endswith("Z") for e in events)
        assert "error" not in events[0]

    run(scenario)


def test_a_tampered_body_does_not_verify(tmp_path: Path) -> None:
    async def scenario() -> None:
        receiver = Receiver()
        async with receiver as url:
            hook = Webhook(url, SECRET, backoff=0.01)
            async with registry(tmp_path, ["a"], Fleet(), webhook=hook) as reg:
                await ask(reg, "a")
                await until(lambda: len(receiver.received) == 1)
        headers, body = receiver.received[0]
        with pytest.raises(AssertionError):
            verified(headers, body.replace(b'"ok"', b'"no"'))

    run(scenario)


def test_failed_deliveries_are_retried_and_logged_without_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bastion.router")

    async def scenario() -> None:
        receiver = Receiver([500, 503])
        async with receiver as url:
            hook = Webhook(url, SECRET, backoff=0.01)
            async with registry(tmp_path, ["a"], Fleet(), webhook=hook) as reg:
                await ask(reg, "a")
                await until(lambda: len(receiver.received) == 3)
        bodies = {b for _, b in receiver.received}
        assert len(bodies) == 1  # the same event, retried
        verified(*receiver.received[-1])

    run(scenario)
    log = caplog.text
    assert "attempt 1 of 4 failed: HTTP 500" in log
    assert "attempt 2 of 4 failed: HTTP 503" in log
    assert SECRET.decode() not in log
    assert "not-logged" not in log  # the URL's query may carry a token


def test_an_unreachable_endpoint_never_blocks_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        hook = Webhook("http://127.0.0.1:9/hook", SECRET, attempts=2, backoff=0.01)
        async with registry(tmp_path, ["a"], Fleet(), webhook=hook) as reg:
            assert await ask(reg, "a") == "ok"
            await reg.unload("a")
            assert await ask(reg, "a") == "ok"
            await until(lambda: "gave up" in caplog.text)

    run(scenario)


def test_the_secret_comes_from_the_named_environment_variable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = RouterSettings(webhook_url="http://127.0.0.1:9/", webhook_secret_env="HOOK_KEY")  # noqa: S106 - a name
    monkeypatch.delenv("HOOK_KEY", raising=False)
    assert Webhook.from_settings(settings) is None  # misconfigured: refuse to send unsigned
    assert "HOOK_KEY" in caplog.text
    monkeypatch.setenv("HOOK_KEY", SECRET.decode())
    hook = Webhook.from_settings(settings)
    assert hook is not None
    assert hook._secret == SECRET
    assert Webhook.from_settings(RouterSettings()) is None
