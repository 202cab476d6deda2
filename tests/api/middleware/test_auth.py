"""Scopes: which credential may call which route.

``inference`` keys reach the OpenAI routes only; ``/api/*`` and ``/metrics`` need ``admin``.
Loopback has every scope only while ``auth.loopback_bypass`` is on; a client certificate is
inference only unless its CN is in ``auth.admin_certs``. Refusals are 403 in the OpenAI
envelope and audited with the caller's identity.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.api.middleware.auth import AuthMiddleware, required_scope
from bastion.security.api_keys import ADMIN, INFERENCE, KeyStore
from tests.api.stub_app import MODEL, client, running_app

REMOTE = "192.0.2.10"
LOOPBACK = "127.0.0.1"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

INFERENCE_ROUTES = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", CHAT),
    ("GET", "/ready", None),
]
ADMIN_ROUTES = [
    ("GET", "/api/status", None),
    ("GET", "/api/models", None),
    ("POST", "/api/models", {"name": "x"}),
    ("DELETE", f"/api/models/{MODEL}", None),
    ("GET", "/metrics", None),
]
# Other spellings of admin routes: each must be refused to an inference key, not routed.
ADMIN_SPELLINGS = [
    ("GET", "//api/status"),
    ("GET", "/api/status/"),
    ("GET", "/API/status"),
    ("GET", "/v1/../api/status"),
    ("GET", "/v1/./../api/models"),
    ("DELETE", f"/api//models/{MODEL}"),
    ("DELETE", f"/api/models/{MODEL}/."),
    ("GET", "/metrics/"),
    ("GET", "//metrics"),
    ("GET", "/api"),
]


@pytest.fixture
def keys(home: Path) -> dict[str, str]:
    store = KeyStore(home)
    return {
        "inference": store.create("chat"),
        "admin": store.create("ops", frozenset({ADMIN})),
        "both": store.create("root", frozenset({ADMIN, INFERENCE})),
    }


async def _status(
    home: Path, address: str, key: str | None, requests: list[tuple[str, str, object]], **kw: bool
) -> list[int]:
    statuses = []
    async with running_app(home, **kw) as app, client(app, address, key) as http:
        for method, path, body in requests:
            response = await http.request(method, path, json=body)
            statuses.append(response.status_code)
    return statuses


def statuses(home: Path, address: str, key: str | None, requests: list, **kw: bool) -> list[int]:  # type: ignore[type-arg]
    return asyncio.run(_status(home, address, key, requests, **kw))


@pytest.mark.parametrize("address", [REMOTE, LOOPBACK])
def test_an_inference_key_reaches_the_openai_routes_and_no_admin_route(
    home: Path, keys: dict[str, str], address: str
) -> None:
    got = statuses(
        home, address, keys["inference"], INFERENCE_ROUTES + ADMIN_ROUTES, loopback_bypass=False
    )
    assert got[: len(INFERENCE_ROUTES)] == [200] * len(INFERENCE_ROUTES)
    assert got[len(INFERENCE_ROUTES) :] == [403] * len(ADMIN_ROUTES)


def test_an_admin_only_key_reaches_admin_routes_but_not_inference(
    home: Path, keys: dict[str, str]
) -> None:
    got = statuses(
        home, REMOTE, keys["admin"], INFERENCE_ROUTES + ADMIN_ROUTES[:2] + ADMIN_ROUTES[-1:]
    )
    assert got == [403] * len(INFERENCE_ROUTES) + [200, 200, 200]


def test_a_key_with_both_scopes_reaches_both(home: Path, keys: dict[str, str]) -> None:
    got = statuses(
        home, REMOTE, keys["both"], INFERENCE_ROUTES + ADMIN_ROUTES[:2] + ADMIN_ROUTES[-1:]
    )
    assert got == [200] * (len(INFERENCE_ROUTES) + 3)


def test_loopback_has_every_scope_while_bypass_is_on(home: Path, keys: dict[str, str]) -> None:
    got = statuses(home, LOOPBACK, None, INFERENCE_ROUTES + ADMIN_ROUTES[:2] + ADMIN_ROUTES[-1:])
    assert got == [200] * (len(INFERENCE_ROUTES) + 3)


def test_loopback_without_bypass_needs_a_key_and_its_scope(
    home: Path, keys: dict[str, str]
) -> None:
    assert statuses(home, LOOPBACK, None, ADMIN_ROUTES, loopback_bypass=False) == [401] * len(
        ADMIN_ROUTES
    )
    assert statuses(home, LOOPBACK, keys["inference"], ADMIN_ROUTES[:1], loopback_bypass=False) == [
        403
    ]


@pytest.mark.parametrize("address", [REMOTE, LOOPBACK])
def test_no_key_is_401_everywhere_but_health(
    home: Path, keys: dict[str, str], address: str
) -> None:
    got = statuses(
        home,
        address,
        None,
        [*INFERENCE_ROUTES, *ADMIN_ROUTES, ("GET", "/health", None)],
        loopback_bypass=False,
    )
    assert got == [401] * (len(INFERENCE_ROUTES) + len(ADMIN_ROUTES)) + [200]


async def _raw_status(app: ASGIApp, method: str, path: str, key: str) -> int:
    """One request with ``path`` exactly as given (an HTTP client would clean it up)."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"authorization", f"Bearer {key}".encode())],
        "client": (REMOTE, 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return int(sent[0]["status"])


def test_every_spelling_of_an_admin_route_is_refused_to_an_inference_key(
    home: Path, keys: dict[str, str]
) -> None:
    async def scenario() -> list[int]:
        async with running_app(home) as app:
            return [await _raw_status(app, m, p, keys["inference"]) for m, p in ADMIN_SPELLINGS]

    assert asyncio.run(scenario()) == [403] * len(ADMIN_SPELLINGS)
    assert (home / "models" / MODEL / "tiny.gguf").is_file()


def test_a_refusal_is_an_openai_envelope_and_is_audited(home: Path, keys: dict[str, str]) -> None:
    async def scenario() -> dict[str, object]:
        async with running_app(home) as app, client(app, REMOTE, keys["inference"]) as http:
            response = await http.delete(f"/api/models/{MODEL}")
            assert response.status_code == 403
            return response.json()  # type: ignore[no-any-return]

    body = asyncio.run(scenario())
    assert body["error"]["code"] == "insufficient_scope"  # type: ignore[index]
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "admin" in body["error"]["message"]  # type: ignore[index]
    records = [
        json.loads(line) for line in (home / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    refused = [r for r in records if r.get("status") == 403]
    assert len(refused) == 1
    assert refused[0]["identity"] == "key:chat"
    assert refused[0]["route"] == f"DELETE /api/models/{MODEL}"


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/health", None),
        ("//health", None),
        ("/v1/chat/completions", INFERENCE),
        ("/v1/models/x", INFERENCE),
        ("/ready", INFERENCE),
        ("/nowhere", INFERENCE),
        ("/apiary", INFERENCE),
        ("/metrics", ADMIN),
        ("/Metrics", ADMIN),
        ("/api/models", ADMIN),
        ("/health/../api/models", ADMIN),
        ("/api/../health", None),
    ],
)
def test_required_scope_is_decided_on_the_normalised_path(path: str, scope: str | None) -> None:
    assert required_scope(path) == scope


def _call_with_cert(cn: str, path: str, admin_certs: frozenset[str], home: Path) -> int:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    middleware = AuthMiddleware(
        ok, KeyStore(home), loopback_bypass=False, disabled=False, admin_certs=admin_certs
    )
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [],
        "client": (REMOTE, 1),
        "extensions": {"tls": {"client_cn": cn}},
    }
    asyncio.run(middleware(scope, receive, send))
    return int(sent[0]["status"])


@pytest.mark.parametrize("path", ["/api/status", "/metrics", f"/api/models/{MODEL}"])
def test_a_client_certificate_is_admin_only_when_its_cn_is_listed(home: Path, path: str) -> None:
    assert _call_with_cert("laptop", "/v1/models", frozenset(), home) == 200
    assert _call_with_cert("laptop", path, frozenset(), home) == 403
    assert _call_with_cert("laptop", path, frozenset({"ops-box"}), home) == 403
    assert _call_with_cert("ops-box", path, frozenset({"ops-box"}), home) == 200
