"""docs/security.md "TLS and mutual TLS", walked as an operator would: the CLI issues the CA,
the server certificate and a laptop's certificate; the server binds 0.0.0.0 with client
certificates required; the `openai` SDK connects by address and by the certificate's name."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpcore
import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import BASTION, Server, launch

pytestmark = pytest.mark.e2e
NAME = "bastion.lan"
HTTPS = re.compile(r"listening on https://0\.0\.0\.0:(\d+)/v1")
HTTP = re.compile(r"listening on http://(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)/v1")


def environ(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env.update({"BASTION_HOME": str(home), "BASTION_ENGINE__THREADS": "2", **extra})
    return env


def bastion(home: Path, *args: str) -> str:
    done = subprocess.run(
        [str(BASTION), *args], env=environ(home), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def serve(home: Path, *args: str, **env: str) -> Server:
    """``bastion serve`` bound as given (conftest's helper expects a 127.0.0.1 listener)."""
    client_ca = str(home / "tls" / "ca.crt")
    return launch(["serve", *args], environ(home, BASTION_TLS__CLIENT_CA=client_ca, **env))


def wait_ready(server: Server, home: Path, port: int, timeout: float = 120) -> None:
    """Until ``/ready`` answers 200 over HTTPS (with the laptop's certificate)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=laptop(home)) as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if http.get(f"https://127.0.0.1:{port}/ready").status_code == 200:
                    return
            if time.monotonic() > deadline or server.process.poll() is not None:
                raise AssertionError(f"server never became ready:\n{server.log_text()}")
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("recipe") / "home"
    bastion(home, "certs", "init")
    issued = bastion(home, "certs", "issue", "--server", NAME, "--san", "192.168.1.20")
    sans = issued.split("valid for: ", 1)[1].strip().split(", ")
    expected = {NAME, "192.168.1.20", "localhost", "127.0.0.1", "::1", socket.gethostname().lower()}
    assert expected <= set(sans), issued
    bastion(home, "certs", "issue", "laptop")
    return home


@pytest.fixture(scope="module")
def recipe(home: Path) -> Iterator[tuple[Server, int, int]]:
    """The recipe's server (HTTPS on every address, plain HTTP on loopback): it, its plain
    port and its HTTPS port. The docs say --tls-port 8443; a free port here."""
    server = serve(home, "--tls-host", "0.0.0.0", "--tls-port", "0", "--port", "0")
    try:
        https = int(server.wait_for_log(HTTPS.pattern).group(1))
        plain = int(server.wait_for_log(HTTP.pattern).group(1))
        wait_ready(server, home, https)
        yield server, plain, https
    finally:
        server.stop()


def laptop(home: Path) -> ssl.SSLContext:
    tls = home / "tls"
    context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    context.load_cert_chain(tls / "clients" / "laptop.crt", tls / "clients" / "laptop.key")
    return context


class _Resolve(httpcore.SyncBackend):
    """`curl --resolve` for httpx: the certificate's name, connected to 127.0.0.1."""

    def connect_tcp(self, host: str, port: int, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        return super().connect_tcp("127.0.0.1" if host == NAME else host, port, *args, **kwargs)  # type: ignore[arg-type]


def by_name(context: ssl.SSLContext) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=context)
    transport._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=_Resolve())
    return httpx.Client(transport=transport, timeout=120)


def chat(client: OpenAI) -> str:
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=8,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def test_the_sdk_reaches_the_server_by_address_and_by_name(
    home: Path, recipe: tuple[Server, int, int]
) -> None:
    _, _, port = recipe
    with httpx.Client(verify=laptop(home), timeout=120) as http:
        sdk = OpenAI(base_url=f"https://127.0.0.1:{port}/v1", api_key="unused", http_client=http)
        assert chat(sdk)
    # Bound to 0.0.0.0, reached over loopback under the certificate's name: not a rebinding.
    with by_name(laptop(home)) as http:
        sdk = OpenAI(base_url=f"https://{NAME}:{port}/v1", api_key="unused", http_client=http)
        assert chat(sdk)
        assert http.get(f"https://{NAME}:{port}/v1/models").status_code == 200


def test_the_certificate_name_is_trusted_only_over_https(
    recipe: tuple[Server, int, int],
) -> None:
    _, plain, _ = recipe
    response = httpx.get(f"http://127.0.0.1:{plain}/v1/models", headers={"Host": NAME})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "untrusted_host"


def test_the_listeners_are_announced(recipe: tuple[Server, int, int]) -> None:
    server, plain, port = recipe
    server.wait_for_log(
        rf"listeners: HTTPS with client certificates on https://0\.0\.0\.0:{port}; "
        rf"plain HTTP on loopback: http://127\.0\.0\.1:{plain}"
    )
    assert "does not cover" not in server.log_text()


def test_a_client_without_a_certificate_is_told_so(
    home: Path, recipe: tuple[Server, int, int]
) -> None:
    server, _, port = recipe
    context = ssl.create_default_context(cafile=str(home / "tls" / "ca.crt"))
    with httpx.Client(verify=context) as http:
        response = http.get(f"https://127.0.0.1:{port}/v1/models")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "client_certificate_required"
    server.wait_for_log(
        r"refused TLS handshake from 127\.0\.0\.1: the client sent no certificate "
        r"\(PEER_DID_NOT_RETURN_A_CERTIFICATE\)"
    )


def test_a_certificate_of_another_ca_is_logged_in_words(
    home: Path, recipe: tuple[Server, int, int], tmp_path: Path
) -> None:
    server, _, port = recipe
    other = tmp_path / "other"
    bastion(other, "certs", "init")
    bastion(other, "certs", "issue", "mallory")
    context = ssl.create_default_context(cafile=str(home / "tls" / "ca.crt"))
    clients = other / "tls" / "clients"
    context.load_cert_chain(clients / "mallory.crt", clients / "mallory.key")
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(f"https://127.0.0.1:{port}/v1/models", verify=context)
    server.wait_for_log(
        # OpenSSL's verdict: both CAs are named "bastion CA", so the signature is what fails.
        r"refused TLS handshake from 127\.0\.0\.1: failed: the client's certificate did not "
        r"verify: certificate signature failure \(CERTIFICATE_VERIFY_FAILED\)"
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_as_the_docs_show(home: Path, recipe: tuple[Server, int, int]) -> None:
    _, _, port = recipe
    tls = home / "tls"
    base = ["curl", "-sS", "--resolve", f"{NAME}:{port}:127.0.0.1", "--cacert", str(tls / "ca.crt")]
    url = f"https://{NAME}:{port}/v1/models"
    cert = [
        "--cert",
        str(tls / "clients" / "laptop.crt"),
        "--key",
        str(tls / "clients" / "laptop.key"),
    ]
    ok = subprocess.run([*base, *cert, url], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["data"]
    refused = subprocess.run([*base, url], capture_output=True, text=True, check=False)
    assert json.loads(refused.stdout)["error"]["code"] == "client_certificate_required"


def test_no_plain_leaves_only_https(home: Path) -> None:
    plain = free_port()
    server = serve(home, "--host", "0.0.0.0", "--port", str(plain), "--tls-port", "0", "--no-plain")
    try:
        port = int(server.wait_for_log(HTTPS.pattern).group(1))
        server.wait_for_log(r"plain HTTP off \(--no-plain\)")
        wait_ready(server, home, port)
        with httpx.Client(verify=laptop(home), timeout=120) as http:
            sdk = OpenAI(
                base_url=f"https://127.0.0.1:{port}/v1", api_key="unused", http_client=http
            )
            assert chat(sdk)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{plain}/health")
        assert "listening on http://" not in server.log_text()
    finally:
        assert server.stop() == 0


def test_plain_http_beside_https_on_every_address_is_a_warning(home: Path) -> None:
    server = serve(
        home,
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--tls-port",
        "0",
        BASTION_SERVER__TRUSTED_HOSTS='["api.example"]',
    )
    try:
        plain = int(server.wait_for_log(HTTP.pattern).group(1))
        server.wait_for_log(rf"plain HTTP, without TLS, is also open on http://0\.0\.0\.0:{plain}")
        server.wait_for_log(r"the server certificate does not cover api\.example \(it lists")
    finally:
        assert server.stop() == 0
