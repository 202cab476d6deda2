"""URL pulls over real sockets: resume after a dropped connection, digest check, and
refusals of server-side request forgery, also through redirects."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from bastion.store.download import (
    DownloadError,
    ForbiddenUrlError,
    UrlPolicy,
    download,
    system_resolver,
    vet,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    drops_left = 1
    redirect_to: str | None = None
    requests: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.headers.get("Range"))
        if type(self).redirect_to:
            self.send_response(302)
            self.send_header("Location", type(self).redirect_to or "")
            self.end_headers()
            return
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        body = PAYLOAD[start:]
        if type(self).drops_left:
            type(self).drops_left -= 1
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop mid-file
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(host: str, **attrs: object) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"requests": [], **attrs})
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def flaky_server() -> Iterator[str]:
    yield from serve("127.0.0.1", drops_left=1)


MIRROR = UrlPolicy(allow_http=True, allowlist=frozenset({"127.0.0.1"}))


def test_dropped_connection_resumes_with_range_and_verifies(
    flaky_server: str, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    seen: list[int] = []
    download(
        f"{flaky_server}/model.gguf",
        dest,
        DIGEST,
        MIRROR,
        progress=lambda have, total: seen.append(have),
    )
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "model.gguf.part").exists()
    assert max(seen) == len(PAYLOAD)


def test_wrong_digest_discards_the_file(flaky_server: str, tmp_path: Path) -> None:
    dest = tmp_path / "model.gguf"
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download(f"{flaky_server}/model.gguf", dest, "00" * 32, MIRROR)
    assert not dest.exists()
    assert not (tmp_path / "model.gguf.part").exists()


def test_plain_http_is_refused_by_default() -> None:
    with pytest.raises(ForbiddenUrlError, match=r"store\.allow_http"):
        vet("http://example.org/m.gguf", UrlPolicy(), lambda h, p: ["93.184.216.34"])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.10",
        "172.16.5.4",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "0.0.0.0",
    ],
)
def test_private_and_loopback_addresses_are_refused(address: str) -> None:
    with pytest.raises(ForbiddenUrlError, match=r"store\.url_allowlist"):
        vet("https://innocent.example/m.gguf", UrlPolicy(), lambda h, p: [address])


def test_loopback_by_name_is_refused_with_the_real_resolver() -> None:
    with pytest.raises(ForbiddenUrlError):
        vet("https://localhost/m.gguf", UrlPolicy(), system_resolver)


def test_credentials_in_urls_are_refused() -> None:
    with pytest.raises(ForbiddenUrlError, match="credentials"):
        vet("https://user:pw@example.org/m.gguf", UrlPolicy(), lambda h, p: ["93.184.216.34"])


@pytest.fixture
def target_server() -> Iterator[str]:
    yield from serve("127.0.0.1", drops_left=0)


def test_redirect_to_loopback_is_refused(target_server: str, tmp_path: Path) -> None:
    """The first hop is an allowed mirror (127.0.0.2); its redirect to 127.0.0.1 is not."""
    gen = serve("127.0.0.2", redirect_to=f"{target_server}/model.gguf")
    mirror = next(gen)
    try:
        policy = UrlPolicy(allow_http=True, allowlist=frozenset({"127.0.0.2"}))
        with pytest.raises(ForbiddenUrlError, match=r"127\.0\.0\.1"):
            download(f"{mirror}/model.gguf", tmp_path / "m.gguf", DIGEST, policy)
    finally:
        gen.close()
    assert not (tmp_path / "m.gguf").exists()
