"""Handshakes and connection counts over real sockets: a TLS handshake that does not finish
in ``server.tls_handshake_timeout`` is cut off, and connections past
``server.max_connections_per_client`` are refused at once on either port, while other
addresses are still served and the other listener stays up."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bastion.security.tls import init_ca, issue
from tests.e2e.conftest import Server, start_server
from tests.e2e.test_limits import assert_closed, error_code, head, read_response

pytestmark = pytest.mark.e2e
PER_CLIENT = 3
OTHER_ADDRESS = "127.0.0.2"  # another loopback address: another client to the server


@dataclass
class Guarded:
    server: Server
    tls_port: int
    home: Path
    pki: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "tls" / "ca.crt"))
        clients = self.pki / "tls" / "clients"
        ctx.load_cert_chain(str(clients / "alice.crt"), str(clients / "alice.key"))
        return ctx

    def plain(self, source: str = "127.0.0.1") -> socket.socket:
        port = int(self.server.base_url.rsplit(":", 1)[1])
        return socket.create_connection(("127.0.0.1", port), 15, (source, 0))

    def raw_tls_port(self, source: str = "127.0.0.1") -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.tls_port), 15, (source, 0))

    def tls(self, source: str = "127.0.0.1") -> ssl.SSLSocket:
        return self.client_context().wrap_socket(
            self.raw_tls_port(source), server_hostname="127.0.0.1"
        )

    def https_get(self, path: str, source: str) -> httpx.Response:
        transport = httpx.HTTPTransport(verify=self.client_context(), local_address=source)
        with httpx.Client(transport=transport, timeout=15) as client:
            return client.get(f"https://127.0.0.1:{self.tls_port}{path}")

    def http_get(self, path: str, source: str) -> httpx.Response:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as client:
            return client.get(f"{self.server.base_url}{path}", timeout=15)

    def audit_records(self, route: str) -> list[dict[str, object]]:
        """Records of ``route`` in any audit file (callers without identity have their own)."""
        paths = (self.home / "audit").glob("*.jsonl")
        lines = (line for path in paths for line in path.read_text().splitlines())
        return [r for r in map(json.loads, lines) if r.get("route") == route]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, shared_home: Path) -> Iterator[Guarded]:
    pki = tmp_path_factory.mktemp("pki")  # certificates apart: the shared home keeps its model
    init_ca(pki)
    server_cert = issue(pki, "bastion.local", server=True, sans=["localhost", "127.0.0.1"])
    issue(pki, "alice")
    # This CA lives apart from the server's home, so its revocation list travels in the bundle.
    bundle = pki / "client-ca.pem"
    bundle.write_bytes(
        (pki / "tls" / "ca.crt").read_bytes() + (pki / "tls" / "crl.pem").read_bytes()
    )
    server = start_server(
        shared_home,
        "--tls-port",
        "0",
        env={
            "BASTION_TLS__CERTFILE": str(server_cert.cert),
            "BASTION_TLS__KEYFILE": str(server_cert.key),
            "BASTION_TLS__CLIENT_CA": str(bundle),
            "BASTION_SERVER__TLS_HANDSHAKE_TIMEOUT": "1",
            "BASTION_SERVER__MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
            # Admitted connections the tests hold open idle must outlive the test.
            "BASTION_SERVER__HEADER_TIMEOUT": "60",
        },
    )
    try:
        https = server.wait_for_log(r"listening on https://127\.0\.0\.1:(\d+)/v1")
        yield Guarded(server, int(https.group(1)), shared_home, pki)
    finally:
        server.stop()


def test_the_open_file_limit_is_logged_at_start(guarded: Guarded) -> None:
    assert re.search(r"open-file limit (\d+|unlimited) \(hard limit", guarded.server.log_text())


@pytest.mark.parametrize(
    "sent",
    [b"", b"\x16", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
    ids=["nothing", "one-byte", "partial-client-hello"],
)
def test_a_handshake_that_does_not_finish_is_cut_off(guarded: Guarded, sent: bytes) -> None:
    with guarded.raw_tls_port() as sock:
        sock.sendall(sent)
        assert_closed(sock)  # by the server, long before the 15 s socket timeout
    guarded.server.wait_for_log(r"refused TLS handshake.*not complete within 1s")
    assert guarded.https_get("/health", "127.0.0.1").status_code == 200


def test_a_failed_handshake_is_logged_with_its_reason_and_audited(guarded: Guarded) -> None:
    with guarded.raw_tls_port() as sock:
        sock.sendall(head())  # plain HTTP to the TLS port
        with contextlib.suppress(ConnectionResetError):
            sock.recv(4096)  # the TLS alert, then the end
    guarded.server.wait_for_log(r"refused TLS handshake.*failed: HTTP_REQUEST")
    deadline = time.monotonic() + 20
    while not guarded.audit_records("TLS handshake") and time.monotonic() < deadline:
        time.sleep(0.05)
    [record, *_] = guarded.audit_records("TLS handshake")
    assert record["client"] == "127.0.0.1"
    assert record["identity"] is None
    assert isinstance(record["count"], int)
    assert record["count"] >= 1
    assert record["reason"] in {"failed: HTTP_REQUEST", "not complete within 1s"}


def eventually(get: Callable[[], httpx.Response], timeout: float = 20) -> httpx.Response:
    """``get``'s answer once the server has noticed closed connections and let one in."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = get()
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code != 503:
            return response
        if time.monotonic() > deadline:
            raise AssertionError("the server never gave the closed connections' places back")
        time.sleep(0.05)


def test_tls_connections_past_the_per_client_cap_are_refused(guarded: Guarded) -> None:
    with contextlib.ExitStack() as held:
        for _ in range(PER_CLIENT):
            held.enter_context(guarded.tls())
        with pytest.raises(OSError):  # a reset or an end of file instead of a handshake
            guarded.tls()
        guarded.server.wait_for_log(
            r"refused connection.*client address at max_connections_per_client"
        )
        # Another address is still served on this port, and the plain port from any address.
        assert guarded.https_get("/v1/models", OTHER_ADDRESS).status_code == 200
        assert guarded.http_get("/health", "127.0.0.1").status_code == 200
    # Closed connections give their places back.
    assert eventually(lambda: guarded.https_get("/health", "127.0.0.1")).status_code == 200


def test_plain_connections_past_the_per_client_cap_get_503(guarded: Guarded) -> None:
    with contextlib.ExitStack() as held:
        for _ in range(PER_CLIENT):
            held.enter_context(guarded.plain())
        for _ in range(3):  # each extra one, not only the first
            with guarded.plain() as extra:
                status, headers, body = read_response(extra)
                assert status == 503
                assert headers["connection"] == "close"
                assert error_code(body) == "too_many_connections"
                assert_closed(extra)
        assert guarded.http_get("/health", OTHER_ADDRESS).status_code == 200
        assert guarded.https_get("/health", "127.0.0.1").status_code == 200
    assert eventually(lambda: guarded.http_get("/health", "127.0.0.1")).status_code == 200
