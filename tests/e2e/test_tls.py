"""Real TLS and mutual-TLS handshakes: the client certificate is the credential."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bastion.security.tls import init_ca, issue, revoke
from tests.e2e.conftest import Server, audit_record, start_server

pytestmark = pytest.mark.e2e
HANDSHAKE_FAILED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)


@pytest.fixture(scope="module")
def mtls(
    tmp_path_factory: pytest.TempPathFactory, shared_home: Path
) -> Iterator[tuple[Server, str, Path]]:
    home = tmp_path_factory.mktemp("tls") / "home"  # its own home: the model imports anew
    init_ca(home)
    issue(home, "bastion.local", server=True, sans=["localhost", "127.0.0.1"])
    issue(home, "alice")
    server = start_server(
        home,
        "--tls-port",
        "0",
        env={
            "BASTION_TLS__CLIENT_CA": str(home / "tls" / "ca.crt"),
            "BASTION_AUTH__LOOPBACK_BYPASS": "false",
        },
        wait_ready=False,
    )
    try:
        https = server.wait_for_log(r"listening on (https://127\.0\.0\.1:\d+)/v1").group(1)
        server.wait_for_log(r"model smollm2-135m-instruct ready", timeout=120)
        yield server, https, home
    finally:
        server.stop()


def context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def test_a_valid_client_certificate_is_the_credential(mtls: tuple[Server, str, Path]) -> None:
    server, https, home = mtls
    tls = home / "tls"
    with httpx.Client(
        verify=context(tls / "ca.crt", tls / "clients" / "alice.crt", tls / "clients" / "alice.key")
    ) as client:
        response = client.get(f"{https}/v1/models", headers={"X-Request-Id": "mtls-alice"})
    assert response.status_code == 200
    assert audit_record(home, "client-mtls-alice")["identity"] == "cert:alice"
    # the plain listener still wants a key from this (non-bypassed) caller
    assert httpx.get(f"{server.v1}/models").status_code == 401


def test_no_client_certificate_is_refused_in_words(mtls: tuple[Server, str, Path]) -> None:
    """The handshake completes so that the refusal can say why; no request reaches the app."""
    server, https, home = mtls
    context = ssl.create_default_context(cafile=str(home / "tls" / "ca.crt"))
    with httpx.Client(verify=context) as client:
        response = client.get(f"{https}/v1/models", headers={"X-Request-Id": "mtls-nocert"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "client_certificate_required"
    server.wait_for_log(r"refused TLS handshake from 127\.0\.0\.1: the client sent no certificate")
    assert "mtls-nocert" not in server.log_text()


def test_a_certificate_from_another_ca_fails(
    mtls: tuple[Server, str, Path], tmp_path: Path
) -> None:
    _, https, home = mtls
    other = tmp_path / "other"
    init_ca(other)
    mallory = issue(other, "mallory")
    with (
        pytest.raises(HANDSHAKE_FAILED),
        httpx.Client(verify=context(home / "tls" / "ca.crt", mallory.cert, mallory.key)) as client,
    ):
        client.get(f"{https}/v1/models")


def test_an_expired_certificate_fails(mtls: tuple[Server, str, Path]) -> None:
    _, https, home = mtls
    old = issue(
        home, "expired-bob", days=30, not_before=dt.datetime.now(tz=dt.UTC) - dt.timedelta(days=90)
    )
    with (
        pytest.raises(HANDSHAKE_FAILED),
        httpx.Client(verify=context(home / "tls" / "ca.crt", old.cert, old.key)) as client,
    ):
        client.get(f"{https}/v1/models")


def test_a_revoked_certificate_fails_while_a_valid_one_passes(
    mtls: tuple[Server, str, Path],
) -> None:
    server, https, home = mtls
    ca = home / "tls" / "ca.crt"
    carol = issue(home, "carol")
    with httpx.Client(verify=context(ca, carol.cert, carol.key)) as client:
        assert client.get(f"{https}/v1/models").status_code == 200
    revoke(home, "carol")  # the running server picks the list up: no restart
    with (
        pytest.raises(HANDSHAKE_FAILED),
        httpx.Client(verify=context(ca, carol.cert, carol.key)) as client,
    ):
        client.get(f"{https}/v1/models")
    alice = home / "tls" / "clients"
    with httpx.Client(verify=context(ca, alice / "alice.crt", alice / "alice.key")) as client:
        assert (
            client.get(f"{https}/v1/models", headers={"X-Request-Id": "mtls-after"}).status_code
            == 200
        )
    assert "revocation list" in server.log_text()


def test_ca_key_is_private(mtls: tuple[Server, str, Path]) -> None:
    _, _, home = mtls
    assert oct((home / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((home / "tls" / "clients" / "alice.key").stat().st_mode & 0o777) == "0o600"
