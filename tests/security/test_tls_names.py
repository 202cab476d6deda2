"""The server certificate's names, and the words a failed handshake is logged with."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.api.middleware.trusted_host import TrustedHostMiddleware
from bastion.api.protocol import handshake_failure
from bastion.security.tls import certificate_sans, init_ca, issue, server_sans, uncovered

BASTION = Path(sys.executable).with_name("bastion")


def test_a_server_certificate_always_names_its_cn_and_loopback(tmp_path: Path) -> None:
    init_ca(tmp_path)
    issued = issue(tmp_path, "Bastion.LAN", server=True, sans=["10.0.0.5", "[::1]", "0.0.0.0"])
    assert issued.sans == ("bastion.lan", "10.0.0.5", "::1", "localhost", "127.0.0.1")
    assert sorted(certificate_sans(issued.cert)) == sorted(issued.sans)


def test_wildcard_binds_and_duplicates_are_not_names() -> None:
    assert server_sans("box", ["box", "::", "[::]", "0.0.0.0"], ["127.0.0.1", "192.168.1.2"]) == [
        "box",
        "localhost",
        "127.0.0.1",
        "::1",
        "192.168.1.2",
    ]


def test_uncovered_matches_as_a_tls_client_does() -> None:
    sans = ["bastion.lan", "*.corp.example", "127.0.0.1", "::1"]
    names = ["0.0.0.0", "BASTION.LAN", "a.corp.example", "a.b.corp.example", "[::1]", "10.1.1.1"]
    assert uncovered(names, sans) == ["a.b.corp.example", "10.1.1.1"]


def test_certs_issue_adds_the_configured_hosts_and_this_machine(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env.update(
        BASTION_HOME=str(tmp_path),
        BASTION_SERVER__HOST='["0.0.0.0", "192.168.7.7"]',
        BASTION_TLS__HOST='["10.9.9.9"]',
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BASTION), "certs", *args], env=env, capture_output=True, text=True, check=False
        )

    assert run("init").returncode == 0
    done = run("issue", "--server", "bastion.lan", "--san", "alias.lan")
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("valid for: ", 1)[1].strip().split(", ")
    expected = ["bastion.lan", "alias.lan", "localhost", "127.0.0.1", "::1", "192.168.7.7"]
    assert listed[:6] == expected
    assert {"10.9.9.9", socket.gethostname().lower()} <= set(listed)
    assert "0.0.0.0" not in listed
    assert set(certificate_sans(tmp_path / "tls" / "server.crt")) == set(listed)


def _failure(reason: str, verdict: str | None = None) -> ssl.SSLError:
    exc: ssl.SSLError
    if verdict is None:
        exc = ssl.SSLError(1, "handshake failed")
    else:
        exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
        exc.verify_message = verdict
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("exc", "logged"),
    [
        (
            _failure("CERTIFICATE_VERIFY_FAILED", "certificate has expired"),
            (
                "the client's certificate did not verify: certificate has expired "
                "(CERTIFICATE_VERIFY_FAILED)"
            ),
        ),
        (
            _failure("PEER_DID_NOT_RETURN_A_CERTIFICATE"),
            "the client sent no certificate (PEER_DID_NOT_RETURN_A_CERTIFICATE)",
        ),
        (_failure("HTTP_REQUEST"), "HTTP_REQUEST"),
        (
            _failure("TLSV1_ALERT_UNKNOWN_CA"),
            (
                "the client does not trust the server's CA (give it tls/ca.crt) "
                "(TLSV1_ALERT_UNKNOWN_CA)"
            ),
        ),
        (_failure("SOMETHING_NEW"), "SOMETHING_NEW"),
    ],
)
def test_openssl_reasons_are_put_in_words(exc: ssl.SSLError, logged: str) -> None:
    assert handshake_failure(exc) == logged


async def _status(middleware: TrustedHostMiddleware, host: str, tls: object) -> int:
    sent: list[dict[str, object]] = []
    scope: dict[str, object] = {
        "type": "http",
        "server": ("127.0.0.1", 8443),
        "headers": [(b"host", f"{host}:8443".encode())],
    }
    if tls is not None:
        scope["extensions"] = {"tls": tls}

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await middleware(scope, receive, send)  # type: ignore[arg-type]
    return int(sent[0]["status"])  # type: ignore[call-overload]


def test_certificate_names_are_trusted_only_when_the_listener_vouches() -> None:
    asyncio.run(_certificate_names_are_trusted_only_when_the_listener_vouches())


async def _certificate_names_are_trusted_only_when_the_listener_vouches() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]

    middleware = TrustedHostMiddleware(app, trusted=[])
    names = {"server_names": frozenset({"bastion.lan"})}
    assert await _status(middleware, "bastion.lan", names) == 200
    assert await _status(middleware, "bastion.lan", None) == 403
    assert await _status(middleware, "evil.example", names) == 403
