"""An exception nothing handled: a 500 in the envelope, with the request id, audited as 500."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from bastion.api.middleware.unexpected import UnexpectedErrorMiddleware
from tests.api.stub_app import MODEL, client, running_app
from tests.fakes import FakeBehaviour

LOOPBACK = "127.0.0.1"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def audit_records(home: Path) -> list[dict[str, Any]]:
    lines = (
        line for path in (home / "audit").glob("*.jsonl") for line in path.read_text().splitlines()
    )
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("boom"),
        ValueError("client said \n2026 INFO forged \x1b[2J"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        RecursionError("maximum recursion depth exceeded"),
        KeyError("missing"),
    ],
    ids=["runtime", "value-with-control-chars", "unicode", "recursion", "key"],
)
def test_an_unhandled_exception_is_a_500_with_the_id_and_audited(
    home: Path,
    error: Exception,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> httpx.Response:
        # The engine fails before its first chunk with an error nothing expects.
        behaviour = FakeBehaviour(fail_with=error, fail_after=0)
        async with running_app(home, behaviour=behaviour) as app, client(app, LOOPBACK) as http:
            return await http.post("/v1/chat/completions", json=CHAT)

    with caplog.at_level(logging.ERROR):
        response = asyncio.run(scenario())
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "The server had an internal error.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_")
    (record,) = [r for r in audit_records(home) if r.get("request_id") == request_id]
    assert record["status"] == 500
    (logged,) = [r for r in caplog.records if r.name == "bastion.api.errors"]
    first_line = logged.getMessage().split("\n", 1)[0]
    assert first_line.startswith(f"unhandled {type(error).__name__}: ")
    assert first_line.isprintable()  # the message is escaped; only frames follow the newline


def test_after_the_response_began_the_exception_is_left_to_the_server() -> None:
    sent: list[dict[str, Any]] = []

    async def half_answer(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-body")

    async def record(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with pytest.raises(RuntimeError, match="mid-body"):
        asyncio.run(UnexpectedErrorMiddleware(half_answer)(scope, receive, record))
    assert [m["type"] for m in sent] == ["http.response.start"]  # no second start
