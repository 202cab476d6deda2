"""Request ids: the server's own can't be imitated, and the access line is one escaped line."""

from __future__ import annotations

import asyncio
import logging
import re

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from bastion.api.middleware.request_id import RequestIdMiddleware

SERVER_ID = re.compile(r"req_[0-9a-f]{32}")


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def get(path: str, request_id: str | bytes | None = None) -> httpx.Response:
    sent = request_id.encode() if isinstance(request_id, str) else request_id
    headers = {} if sent is None else {b"x-request-id": sent}

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=RequestIdMiddleware(answer))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(call())


def test_a_request_without_an_id_gets_a_server_id() -> None:
    assert SERVER_ID.fullmatch(get("/v1/models").headers["x-request-id"])


@pytest.mark.parametrize("sent", ["trace-abc.123", "a", "x" * 128, "2026:11:25.abc-1", "-"])
def test_a_well_formed_client_id_is_kept_with_a_prefix(sent: str) -> None:
    assert get("/v1/models", sent).headers["x-request-id"] == f"client-{sent}"


@pytest.mark.parametrize(
    "sent",
    [
        "req_0123456789abcdef0123456789abcdef",  # the server's own shape, verbatim
        "req-0123456789abcdef0123456789abcdef",
        "req:00ff",
        "client-x",
    ],
)
def test_a_client_id_never_looks_like_a_server_id(sent: str) -> None:
    returned = get("/v1/models", sent).headers["x-request-id"]
    assert returned.startswith("client-")
    assert not SERVER_ID.fullmatch(returned)


@pytest.mark.parametrize(
    "sent",
    [
        "bad id",
        "a/b",
        "x" * 129,
        "é".encode(),
        b"abc\x00",
        b"id\x1b[31m",
        "id\u2028x".encode(),
        "id\u0085x".encode(),
        "[req_0123456789abcdef0123456789abcdef]",
        "",
    ],
)
def test_a_malformed_client_id_is_replaced_by_a_server_id(sent: str | bytes) -> None:
    returned = get("/v1/models", sent).headers["x-request-id"]
    assert SERVER_ID.fullmatch(returned)


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/v1/a%0AINFO%20forged", "/v1/a\\nINFO\\x20forged"),
        ("/v1/a%0D%0Ab", "/v1/a\\r\\nb"),
        ("/v1/%1B[31mred", "/v1/\\x1b[31mred"),
        ("/v1/a%00b", "/v1/a\\x00b"),
        ("/v1/a%E2%80%A8b", "/v1/a\\u2028b"),
        ("/v1/a%C2%85b", "/v1/a\\x85b"),
        ("/v1/a%E2%80%AEb", "/v1/a\\u202eb"),
    ],
    ids=["newline", "crlf", "ansi", "nul", "line-separator", "next-line", "bidi"],
)
def test_the_access_line_escapes_the_path(
    path: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bastion.access"):
        get(path)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "bastion.access"]
    assert line.startswith(f"GET {logged} 204 ")
    assert line.isascii()
    assert line.isprintable()


@pytest.mark.parametrize("sent", [b"abc\n", b"abc\r\n", b"abc\n[req_0123]"])
def test_a_line_break_never_rides_in_on_a_client_id(sent: bytes) -> None:
    # Below any HTTP parser: the id check alone must refuse it (a "$" anchor would not).
    started: list[Message] = []

    async def keep(message: Message) -> None:
        started.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"x-request-id", sent)]}
    asyncio.run(RequestIdMiddleware(answer)(scope, receive, keep))
    returned = dict(started[0]["headers"])[b"x-request-id"].decode()
    assert SERVER_ID.fullmatch(returned)
