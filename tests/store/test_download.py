"""URL pulls over real sockets: resume after a dropped connection, digest check, and
refusals of server-side request forgery, also through redirects."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from bastion.errors import ConfigError
from bastion.store.download import (
    DownloadError,
    ForbiddenUrlError,
    UrlPolicy,
    download,
    is_public,
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


def mirror(*entries: str) -> UrlPolicy:
    """Plain http allowed, and these ``host:port`` entries (or URLs' netlocs) allowlisted."""
    return UrlPolicy.from_settings(
        True, [e.removeprefix("http://").split("/")[0] for e in entries], 256 * 1024**3
    )


def test_dropped_connection_resumes_with_range_and_verifies(
    flaky_server: str, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    seen: list[int] = []
    download(
        f"{flaky_server}/model.gguf",
        dest,
        DIGEST,
        mirror(flaky_server),
        progress=lambda have, total: seen.append(have),
    )
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "model.gguf.part").exists()
    assert max(seen) == len(PAYLOAD)


def test_wrong_digest_discards_the_file_and_never_shows_what_was_fetched(
    flaky_server: str, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    with pytest.raises(DownloadError, match="does not match the expected SHA-256") as caught:
        download(f"{flaky_server}/model.gguf?token=s3cret", dest, "00" * 32, mirror(flaky_server))
    assert "00" * 32 in caught.value.message
    assert DIGEST not in caught.value.message
    assert "s3cret" not in caught.value.message
    assert not dest.exists()
    assert not (tmp_path / "model.gguf.part").exists()


PUBLIC = "93.184.216.34"


def resolving_to(*addresses: str) -> Callable[[str, int], list[str]]:
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    "address",
    [
        # IPv4 special-purpose registry (RFC 6890 and successors)
        "0.0.0.0",  # this network
        "0.1.2.3",
        "10.1.2.3",  # private
        "100.64.0.1",  # carrier-grade NAT
        "100.100.100.200",  # a cloud metadata service inside carrier-grade NAT space
        "127.0.0.1",  # loopback
        "127.255.255.254",
        "169.254.169.254",  # link-local, the usual metadata address
        "172.16.5.4",  # private
        "192.0.0.8",  # IETF protocol assignments
        "192.0.0.170",  # NAT64 discovery
        "192.0.2.1",  # documentation
        "192.88.99.1",  # deprecated 6to4 relay anycast
        "192.168.0.10",  # private
        "198.18.0.1",  # benchmarking
        "198.51.100.7",  # documentation
        "203.0.113.9",  # documentation
        "224.0.0.1",  # multicast
        "239.255.255.250",
        "240.0.0.1",  # reserved
        "255.255.255.255",  # limited broadcast
        # IPv6 special-purpose registry
        "::",  # unspecified
        "::1",  # loopback
        "100::1",  # discard-only
        "2001:db8::1",  # documentation
        "2001:10::1",  # ORCHID
        "2001:20::1",  # ORCHIDv2
        "3fff::1",  # documentation (RFC 9637)
        "5f00::1",  # segment routing SIDs
        "64:ff9b:1::1",  # local-use NAT64
        "fc00::1",  # unique local
        "fd12:3456::1",
        "fe80::1",  # link-local
        "fe80::1%eth0",
        "fec0::1",  # deprecated site-local
        "ff02::1",  # multicast
        "ff0e::1",  # global-scope multicast is still not a file server
    ],
)
def test_addresses_that_are_not_globally_reachable_are_refused(address: str) -> None:
    assert not is_public(address)
    with pytest.raises(ForbiddenUrlError, match=r"store\.url_allowlist"):
        vet("https://innocent.example/m.gguf", UrlPolicy(), resolving_to(address))


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:100.100.100.200",
        "::127.0.0.1",  # deprecated IPv4-compatible
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "2002:6464:64c8::1",  # 6to4 of 100.100.100.200
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::6464:64c8",  # NAT64 of 100.100.100.200
        "64:ff9b::c0a8:1",  # NAT64 of 192.168.0.1
    ],
)
def test_ipv6_forms_that_embed_a_forbidden_ipv4_address_are_refused(address: str) -> None:
    assert not is_public(address)
    with pytest.raises(ForbiddenUrlError):
        vet("https://innocent.example/m.gguf", UrlPolicy(), resolving_to(address))


@pytest.mark.parametrize(
    "address",
    [
        PUBLIC,
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",  # a mapped public address is that address
        "64:ff9b::808:808",  # NAT64 (DNS64 networks) of a public address
        "2002:808:808::1",  # 6to4 of a public address
    ],
)
def test_globally_reachable_addresses_pass(address: str) -> None:
    assert is_public(address)
    scheme, host, port, connect_to = vet(
        "https://mirror.example/m.gguf", UrlPolicy(), resolving_to(address)
    )
    assert (scheme, host, port, connect_to) == ("https", "mirror.example", 443, address)


def test_one_bad_address_among_good_ones_refuses_the_host() -> None:
    with pytest.raises(ForbiddenUrlError, match=r"100\.100\.100\.200"):
        vet("https://x.example/m", UrlPolicy(), resolving_to(PUBLIC, "100.100.100.200"))


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/m.gguf",
        "https://[::1]/m.gguf",
        "https://[::ffff:7f00:1]/m.gguf",
        "https://[2002:7f00:1::]/m.gguf",
        "https://100.100.100.200/latest/meta-data",
        "https://localhost/m.gguf",
        # spellings of 127.0.0.1 that the system resolver accepts
        "https://0x7f000001/m.gguf",
        "https://2130706433/m.gguf",
        "https://0177.0.0.1/m.gguf",
        "https://127.1/m.gguf",
        "https://0/m.gguf",
    ],
)
def test_forbidden_literals_and_names_are_refused_with_the_real_resolver(url: str) -> None:
    with pytest.raises(ForbiddenUrlError):
        vet(url, UrlPolicy(), system_resolver)


def test_plain_http_is_refused_by_default() -> None:
    with pytest.raises(ForbiddenUrlError, match=r"store\.allow_http"):
        vet("http://example.org/m.gguf", UrlPolicy(), resolving_to(PUBLIC))


def test_credentials_in_urls_are_refused() -> None:
    with pytest.raises(ForbiddenUrlError, match="credentials"):
        vet("https://user:pw@example.org/m.gguf", UrlPolicy(), resolving_to(PUBLIC))


@pytest.mark.parametrize(
    "url",
    [
        "https://a\x1b[31mb.example/m",
        "https://a\x07b.example/m",
        "https://caf\u00e9.example/m",
        "https://[::1/m",
        "https://example.org:99999/m",
    ],
)
def test_malformed_or_odd_hosts_are_refused_without_echoing_raw_characters(url: str) -> None:
    with pytest.raises(ForbiddenUrlError) as caught:
        vet(url, UrlPolicy(), resolving_to(PUBLIC))
    assert caught.value.message.isascii()
    assert caught.value.message.isprintable()


# The allowlist names host AND port as the URL writes them.


@pytest.mark.parametrize(
    ("entry", "url"),
    [
        ("mirror.lan", "https://mirror.lan/m.gguf"),
        ("mirror.lan", "https://mirror.lan:443/m.gguf"),
        ("mirror.lan:443", "https://mirror.lan/m.gguf"),
        ("mirror.lan:8443", "https://mirror.lan:8443/m.gguf"),
        ("MIRROR.lan.", "https://mirror.LAN/m.gguf"),
        ("10.0.0.5:8080", "https://10.0.0.5:8080/m.gguf"),
        ("[fd00::5]:8443", "https://[fd00::5]:8443/m.gguf"),
        ("fd00::5", "https://[fd00:0::5]/m.gguf"),
    ],
)
def test_allowlisted_host_and_port_may_be_private(entry: str, url: str) -> None:
    policy = UrlPolicy.from_settings(False, [entry], 1)
    assert vet(url, policy, resolving_to("10.0.0.5"))[3] == "10.0.0.5"


@pytest.mark.parametrize(
    ("entry", "url"),
    [
        ("mirror.lan", "https://mirror.lan:8443/m.gguf"),  # default port only
        ("mirror.lan:8443", "https://mirror.lan/m.gguf"),
        ("mirror.lan:8443", "https://mirror.lan:9443/m.gguf"),
        ("10.0.0.5:8080", "https://10.0.0.5:8081/m.gguf"),
        ("[fd00::5]:8443", "https://[fd00::5]:443/m.gguf"),
        ("mirror.lan", "https://mirror.lan.evil.example/m.gguf"),
        ("mirror.lan", "https://evil-mirror.lan/m.gguf"),
        ("127.0.0.1:8080", "https://2130706433:8080/m.gguf"),  # the same address, not as written
        ("127.0.0.1:8080", "https://127.1:8080/m.gguf"),
    ],
)
def test_allowlisted_host_with_another_port_or_name_is_vetted_like_any_host(
    entry: str, url: str
) -> None:
    policy = UrlPolicy.from_settings(False, [entry], 1)
    with pytest.raises(ForbiddenUrlError):
        vet(url, policy, resolving_to("10.0.0.5"))


@pytest.mark.parametrize("entry", ["10.0.0.5", "10.0.0.5:443", "127.0.0.1", "mirror.lan"])
def test_a_name_resolving_to_an_allowlisted_address_is_not_allowed(entry: str) -> None:
    policy = UrlPolicy.from_settings(False, [entry], 1)
    address = entry.split(":", maxsplit=1)[0] if entry[0].isdigit() else "10.0.0.5"
    with pytest.raises(ForbiddenUrlError):
        vet("https://rebound.example/m.gguf", policy, resolving_to(address))


@pytest.mark.parametrize(
    "entry", ["https://mirror.lan", "mirror.lan/path", "mirror.lan:port", "user@mirror.lan", ""]
)
def test_allowlist_entries_that_are_not_host_port_are_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"store\.url_allowlist"):
        UrlPolicy.from_settings(False, [entry], 1)


@pytest.fixture
def target_server() -> Iterator[str]:
    yield from serve("127.0.0.1", drops_left=0)


def redirect_server(location: str) -> Iterator[str]:
    return serve("127.0.0.2", redirect_to=location)


@pytest.mark.parametrize(
    "location",
    [
        "{target}/model.gguf",  # another loopback host
        "http://127.0.0.2:1/model.gguf",  # the allowlisted host on another port
        "http://100.100.100.200/latest/meta-data",  # carrier-grade NAT metadata service
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]:80/model.gguf",
        "http://[2002:7f00:1::]/model.gguf",  # 6to4 of loopback
        "http://[64:ff9b::a9fe:a9fe]/model.gguf",  # NAT64 of link-local
        "http://192.0.0.170/model.gguf",
        "http://localhost/model.gguf",
    ],
)
def test_redirects_into_forbidden_space_are_refused(
    target_server: str, tmp_path: Path, location: str
) -> None:
    """The first hop is an allowlisted mirror (127.0.0.2:port); the hop it redirects to is
    vetted like any URL, so none of these is fetched."""
    gen = redirect_server(location.format(target=target_server))
    first = next(gen)
    try:
        with pytest.raises(ForbiddenUrlError):
            download(f"{first}/model.gguf", tmp_path / "m.gguf", DIGEST, mirror(first))
    finally:
        gen.close()
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("location", ["http://[::1/model.gguf", "http://a\x1b[2Jb.example/m"])
def test_a_redirect_to_something_that_is_not_a_url_fails_without_fetching(
    tmp_path: Path, location: str
) -> None:
    gen = redirect_server(location)
    first = next(gen)
    try:
        with pytest.raises(DownloadError):
            download(f"{first}/model.gguf", tmp_path / "m.gguf", DIGEST, mirror(first))
    finally:
        gen.close()
    assert not (tmp_path / "m.gguf").exists()


def test_redirect_to_another_allowlisted_mirror_is_followed(
    target_server: str, tmp_path: Path
) -> None:
    gen = redirect_server(f"{target_server}/model.gguf")
    first = next(gen)
    try:
        download(f"{first}/model.gguf", tmp_path / "m.gguf", DIGEST, mirror(first, target_server))
    finally:
        gen.close()
    assert (tmp_path / "m.gguf").read_bytes() == PAYLOAD


def test_the_connection_goes_to_the_vetted_address(target_server: str, tmp_path: Path) -> None:
    """Only the vetting resolver knows this name, and it answers once per hop: the download
    works only if the client connects to that answer instead of asking DNS again."""
    port = int(target_server.rsplit(":", 1)[1])
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    policy = UrlPolicy.from_settings(True, [f"mirror.invalid:{port}"], 256 * 1024**3)
    download(
        f"http://mirror.invalid:{port}/model.gguf",
        tmp_path / "m.gguf",
        DIGEST,
        policy,
        resolve=resolve,
    )
    assert (tmp_path / "m.gguf").read_bytes() == PAYLOAD
    assert asked == ["mirror.invalid"]
