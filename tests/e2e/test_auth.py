"""Authentication and trusted hosts over real sockets. With the loopback bypass off, a
loopback client stands in for a remote caller."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import bastion_command
from tests.e2e.conftest import Server, audit_record, start_server

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
APP_ORIGIN = "https://app.example:8443"


def raw_get(server: Server, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    """A request with headers exactly as given (httpx would refuse some of them)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        lines = [
            f"GET {path} HTTP/1.1".encode(),
            *(k + b": " + v for k, v in headers),
            b"Connection: close",
            b"",
            b"",
        ]
        sock.sendall(b"\r\n".join(lines))
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, shared_home: Path
) -> Iterator[tuple[Server, str]]:
    env = {"BASTION_HOME": str(shared_home)}
    created = bastion_command(env, "keys", "create", "ci-client")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    server = start_server(
        shared_home,
        env={
            "BASTION_AUTH__LOOPBACK_BYPASS": "false",
            "BASTION_SERVER__TRUSTED_HOSTS": '["bastion.lan"]',
            "BASTION_SERVER__CORS_ORIGINS": f'["{APP_ORIGIN}"]',
        },
        wait_ready=False,
    )
    try:
        yield server, token
    finally:
        server.stop()
        bastion_command(env, "keys", "revoke", "ci-client")


def test_keys_are_stored_as_hashes_only(keyed: tuple[Server, str], shared_home: Path) -> None:
    _, token = keyed
    stored = shared_home / "keys" / "api-keys.json"
    assert token not in stored.read_text()
    assert oct(stored.stat().st_mode & 0o777) == "0o600"
    assert len(token) >= 4 + 43  # prefix + 256 bits in url-safe base64


def test_health_is_open_everything_else_needs_a_key(keyed: tuple[Server, str]) -> None:
    server, token = keyed
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    missing = httpx.get(f"{server.v1}/models")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"]["code"] == "invalid_api_key"
    ok = httpx.get(f"{server.v1}/models", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code in (200, 503)  # 503 only while the model still loads


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer bst_wrong",
        b"Basic dXNlcjpwYXNz",
        b"Bearer",
        b"Bearer " + b"x" * 5000,
        b"Token abc",
        "Bearer bst_\u00e9\u00e9".encode(),
    ],
)
def test_bad_credentials_get_401_never_500(keyed: tuple[Server, str], header: bytes) -> None:
    server, _ = keyed
    assert (
        raw_get(server, "/v1/models", [(b"Host", b"127.0.0.1"), (b"Authorization", header)]) == 401
    )


def test_the_scheme_is_case_insensitive(keyed: tuple[Server, str]) -> None:
    server, token = keyed
    response = httpx.get(f"{server.v1}/models", headers={"Authorization": f"bearer {token}"})
    assert response.status_code != 401


@pytest.mark.parametrize(
    "path",
    [
        "//v1/models",
        "/v1/../v1/models",
        "/health/../v1/models",
        "/v1/models/",
        "/health%2F..%2Fv1/models",
        "/v1%2Fmodels",
        "/./v1/models",
    ],
)
def test_path_tricks_do_not_get_around_auth(keyed: tuple[Server, str], path: str) -> None:
    server, _ = keyed
    status = raw_get(server, path, [(b"Host", b"127.0.0.1")])
    assert status == 401


def test_a_crafted_host_does_not_reach_the_allowlist(keyed: tuple[Server, str]) -> None:
    server, _ = keyed
    assert raw_get(server, "/v1/models", [(b"Host", b"x/health?")]) in (401, 403)


def test_revoked_key_stops_working_on_a_running_server(
    shared_home: Path, keyed: tuple[Server, str]
) -> None:
    server, _ = keyed
    env = {"BASTION_HOME": str(shared_home)}
    token = bastion_command(env, "keys", "create", "short-lived").stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{server.v1}/models", headers=headers).status_code != 401
    assert bastion_command(env, "keys", "revoke", "short-lived").returncode == 0
    assert httpx.get(f"{server.v1}/models", headers=headers).status_code == 401


def test_openai_sdk_with_a_key(keyed: tuple[Server, str]) -> None:
    server, token = keyed
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.v1, api_key="bst_nope", max_retries=0).models.list()
    models = openai.OpenAI(base_url=server.v1, api_key=token, max_retries=0)
    assert models.models.list() is not None


def test_dns_rebinding_host_is_refused(keyed: tuple[Server, str]) -> None:
    server, token = keyed
    auth = (b"Authorization", f"Bearer {token}".encode())
    assert raw_get(server, "/health", [(b"Host", b"evil.example")]) == 403
    assert raw_get(server, "/health", [(b"Host", b"localhost:8000")]) == 200
    assert raw_get(server, "/health", [(b"Host", b"[::1]:8000")]) == 200
    assert raw_get(server, "/health", [(b"Host", b"bastion.lan")]) == 200
    assert raw_get(server, "/v1/models", [(b"Host", b"evil.example"), auth]) == 403


def preflight(server: Server, origin: str) -> httpx.Response:
    return httpx.options(
        f"{server.v1}/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            # as the openai JavaScript SDK sends them
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        },
    )


def test_cors_only_for_configured_origins(keyed: tuple[Server, str], server: Server) -> None:
    remote, token = keyed
    allowed = preflight(remote, APP_ORIGIN)  # preflights carry no key
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-stainless-os" in allowed.headers["access-control-allow-headers"].lower()
    foreign = preflight(remote, "https://evil.example")
    assert "access-control-allow-origin" not in foreign.headers
    call = httpx.get(
        f"{remote.v1}/models",
        headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {token}"},
    )
    assert call.status_code == 200
    assert call.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-request-id" in call.headers["access-control-expose-headers"].lower()
    # Without configured origins there are no CORS headers at all.
    default = httpx.get(f"{server.v1}/models", headers={"Origin": APP_ORIGIN})
    assert default.status_code == 200
    assert not any(h.startswith("access-control-") for h in default.headers)
    assert "access-control-allow-origin" not in preflight(server, APP_ORIGIN).headers


def test_without_any_key_remote_callers_are_refused(tmp_path: Path, shared_home: Path) -> None:
    """Fail closed: a fresh home has no keys."""
    home = tmp_path / "nokeys"
    server = start_server(home, env={"BASTION_AUTH__LOOPBACK_BYPASS": "false"}, wait_ready=False)
    try:
        response = httpx.get(f"{server.v1}/models", headers={"Authorization": "Bearer x"})
        assert response.status_code == 401
        assert "No API keys are configured" in response.json()["error"]["message"]
    finally:
        server.stop()


def test_loopback_bypass_over_ipv4_and_ipv6(shared_home: Path) -> None:
    hosts = ["--host", "127.0.0.1"]
    if socket.has_ipv6:
        hosts += ["--host", "::1"]
    server = start_server(shared_home, *hosts)
    try:
        assert httpx.get(f"{server.v1}/models").status_code == 200
        line = next((ln for ln in server.log if "listening on http://[::1]" in ln), None)
        if line is not None:
            url = line.split("listening on ")[1].strip()
            assert httpx.get(f"{url}/models").status_code == 200
    finally:
        server.stop()


def test_binds_skip_missing_interfaces_but_need_loopback(shared_home: Path) -> None:
    """192.0.2.1 (TEST-NET) is on no interface here: binding it fails without any traffic."""
    env = {"BASTION_HOME": str(shared_home)}
    alone = bastion_command(env, "serve", "--port", "0", "--host", "192.0.2.1")
    assert alone.returncode == 2
    assert "no loopback-capable address" in alone.stderr
    opened = bastion_command(
        {**env, "BASTION_DISABLE_AUTH": "1"}, "serve", "--port", "0", "--host", "0.0.0.0"
    )
    assert opened.returncode == 2
    assert "authentication is disabled" in opened.stderr
    server = start_server(shared_home, "--host", "127.0.0.1", "--host", "192.0.2.1")
    try:
        server.wait_for_log(r"192\.0\.2\.1.*skipping it")
        assert httpx.get(f"{server.base_url}/health").status_code == 200
    finally:
        server.stop()


def test_disabled_auth_is_announced(shared_home: Path) -> None:
    server = start_server(
        shared_home, env={"BASTION_DISABLE_AUTH": "1", "BASTION_AUTH__LOOPBACK_BYPASS": "false"}
    )
    try:
        assert httpx.get(f"{server.v1}/models").status_code == 200
        server.wait_for_log("authentication is DISABLED")
    finally:
        server.stop()


def test_every_request_is_audited_with_who_and_what(
    keyed: tuple[Server, str], shared_home: Path
) -> None:
    server, token = keyed
    client = openai.OpenAI(base_url=server.v1, api_key=token, max_retries=0, timeout=60)
    deadline = time.monotonic() + 60
    while (
        httpx.get(
            f"{server.base_url}/ready", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        != 200
    ):
        assert time.monotonic() < deadline
    reply = client.completions.create(
        model=MODEL,
        prompt="Hi",
        max_tokens=4,
        stream=True,
        extra_headers={"X-Request-Id": "audit-me-1"},
    )
    list(reply)
    httpx.get(f"{server.v1}/models", headers={"X-Request-Id": "audit-me-2"})
    # a client's X-Request-Id is recorded with the "client-" prefix
    by_id = {
        rid: audit_record(shared_home, f"client-{rid}") for rid in ("audit-me-1", "audit-me-2")
    }
    streamed = by_id["audit-me-1"]
    assert streamed["identity"] == "key:ci-client"
    assert streamed["model"] == MODEL
    assert streamed["model_digest"].startswith("sha256:")
    assert streamed["completion_tokens"] == 4
    assert streamed["status"] == 200
    assert "prompt" not in streamed
    assert "completion" not in streamed
    assert "Hi" not in json.dumps(streamed)  # no prompt text
    refused = by_id["audit-me-2"]
    assert (refused["status"], refused["identity"]) == (401, None)
    assert bastion_command({"BASTION_HOME": str(shared_home)}, "audit", "verify").returncode == 0


def test_content_is_audited_only_when_asked_for(shared_home: Path) -> None:
    server = start_server(shared_home, env={"BASTION_AUDIT__INCLUDE_CONTENT": "true"})
    try:
        client = server.client(timeout=60)
        chat = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=6,
            temperature=0,
            extra_headers={"X-Request-Id": "content-chat"},
        )
        stream = client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=6,
            temperature=0,
            stream=True,
            extra_headers={"X-Request-Id": "content-text"},
        )
        streamed = "".join(event.choices[0].text for event in stream)
        body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 1000, "stream": True}
        with httpx.stream(
            "POST",
            f"{server.v1}/completions",
            json={**body, "temperature": 0},
            headers={"X-Request-Id": "content-left"},
            timeout=60,
        ) as response:
            events = response.iter_lines()
            for _ in range(6):
                next(events)  # then the client goes away in the middle of the stream
    finally:
        server.stop()
    chat_record = audit_record(shared_home, "client-content-chat")
    assert chat_record["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert chat_record["completion"] == chat.choices[0].message.content
    text_record = audit_record(shared_home, "client-content-text")
    assert (text_record["prompt"], text_record["completion"]) == ("Once upon a time", streamed)
    left = audit_record(shared_home, "client-content-left")  # what was generated until then
    assert 0 < int(left["completion_tokens"]) < 1000
    assert str(left["completion"]).startswith(" 4")
    assert bastion_command({"BASTION_HOME": str(shared_home)}, "audit", "verify").returncode == 0


def test_metrics_are_prometheus_text_behind_an_admin_key(
    keyed: tuple[Server, str], shared_home: Path
) -> None:
    server, token = keyed
    assert httpx.get(f"{server.base_url}/metrics").status_code == 401
    inference_only = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{server.base_url}/metrics", headers=inference_only).status_code == 403
    env = {"BASTION_HOME": str(shared_home)}
    admin = bastion_command(env, "keys", "create", "ci-metrics", "--scope", "admin")
    assert admin.returncode == 0, admin.stderr
    headers = {"Authorization": f"Bearer {admin.stdout.strip()}"}
    client = openai.OpenAI(base_url=server.v1, api_key=token, max_retries=0, timeout=60)
    client.completions.create(model=MODEL, prompt="Hello", max_tokens=3)
    try:
        response = httpx.get(f"{server.base_url}/metrics", headers=headers)
    finally:
        bastion_command(env, "keys", "revoke", "ci-metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        f'bastion:requests_total{{model="{MODEL}",status="200"}}',
        f'bastion:generation_tokens_total{{model="{MODEL}"}}',
        "bastion:time_to_first_token_seconds_bucket",
        "bastion:inter_token_latency_seconds_bucket",
        "bastion:e2e_request_latency_seconds_bucket",
        "bastion:request_queue_time_seconds_bucket",
        f'bastion:num_requests_running{{model="{MODEL}"}}',
        f'bastion:num_requests_waiting{{model="{MODEL}"}}',
        'bastion:auth_failures_total{reason="missing"}',
        f'bastion:model_load_seconds{{model="{MODEL}"}}',
        f'bastion:model_verification_seconds{{model="{MODEL}"}}',
    ):
        assert name in text, name
