"""URL pulls: streamed, resumable with HTTP Range, size-capped, and refusing server-side
request forgery.

Every hop (the URL and each redirect) is resolved and vetted before anything connects: https
only (unless ``store.allow_http``), and every address the host resolves to must be globally
reachable in the sense of the IANA special-purpose address registries (no loopback, private,
carrier-grade NAT, link-local, documentation, benchmarking, multicast or reserved space, and no
IPv6 form that embeds such an IPv4 address: mapped, 6to4, Teredo, NAT64). The one exception is
a ``host:port`` written in ``store.url_allowlist`` (an internal mirror), matched as the URL
spells it, never by the address a name resolves to. The connection then goes to the vetted
address itself (TLS still verifies the host name), so a second DNS answer cannot redirect it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from bastion.errors import BastionError, ConfigError

Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None)."""
Resolver = Callable[[str, int], list[str]]

MAX_REDIRECTS = 5
CHUNK = 1024 * 1024


class DownloadError(BastionError):
    status = 502
    type = "server_error"
    code = "download_failed"


class ForbiddenUrlError(BastionError):
    status = 400
    type = "invalid_request_error"
    code = "forbidden_url"


AllowedOrigin = tuple[str, int | None]
"""(host, port) from ``store.url_allowlist``; a port of None means the scheme's default."""


@dataclass(frozen=True)
class UrlPolicy:
    allow_http: bool = False
    allowlist: frozenset[AllowedOrigin] = frozenset()
    max_bytes: int = 256 * 1024**3

    @classmethod
    def from_settings(cls, allow_http: bool, allowlist: Iterable[str], max_bytes: int) -> UrlPolicy:
        return cls(allow_http, frozenset(parse_allowed(e) for e in allowlist), max_bytes)


def parse_allowed(entry: str) -> AllowedOrigin:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` from ``store.url_allowlist``."""
    text = entry.strip()
    try:
        return _canonical_host(str(ipaddress.ip_address(text))), None  # a bare IPv6 literal
    except ValueError:
        pass
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or parts.username or parts.password or parts.path or parts.query:
        raise ConfigError(
            f"store.url_allowlist entry {entry!r} is not host, host:port or [ipv6]:port"
        )
    return _canonical_host(host), port


def _canonical_host(host: str) -> str:
    """Lower case, no trailing dot, IP literals in one spelling, so equal hosts compare equal."""
    host = host.lower().removesuffix(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _allowed(policy: UrlPolicy, scheme: str, host: str, port: int) -> bool:
    default = 443 if scheme == "https" else 80
    return any(
        h == host and (p == port or (p is None and port == default)) for h, p in policy.allowlist
    )


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DownloadError(f"cannot resolve {host}: {exc.strerror}") from None
    return sorted({str(info[4][0]) for info in infos})


# IANA special-purpose entries that Python 3.11's ipaddress tables predate or count as global
# (its `is_global` moved with the registry in later releases; this pins bastion's answer).
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24",  # IETF protocol assignments (NAT64 discovery, PCP and TURN anycast)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "fec0::/10",  # deprecated site-local
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"),)
_HOST_CHARS = re.compile(r"[a-z0-9._:%-]+")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo server and client, NAT64)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_public(address: str) -> bool:
    """True when ``address`` (and any IPv4 address embedded in it) is globally reachable."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        # A mapped or NAT64 address only carries its IPv4 address: that one decides.
        if ip.ipv4_mapped is not None or any(ip in net for net in _NAT64):
            return all(_globally_reachable(e) for e in embedded)
        if not all(_globally_reachable(e) for e in embedded):
            return False
    return _globally_reachable(ip)


def _globally_reachable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    return not any(ip.version == net.version and ip in net for net in _NOT_GLOBAL)


def vet(url: str, policy: UrlPolicy, resolve: Resolver) -> tuple[str, str, int, str]:
    """(scheme, host, port, address to connect to) for an allowed URL, else ForbiddenUrlError."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise ForbiddenUrlError(f"{display(url)} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise ForbiddenUrlError(f"only http(s) URLs with a host can be pulled, not {display(url)}")
    if not _HOST_CHARS.fullmatch(host):
        # A redirect's Location is the remote server's text: nothing odd reaches a message.
        raise ForbiddenUrlError(
            f"{display(url)}: the host has characters a host name cannot have "
            "(write international names in their xn-- form)"
        )
    if scheme == "http" and not policy.allow_http:
        raise ForbiddenUrlError(
            f"refusing plain-http URL {display(url)}; use https or set store.allow_http"
        )
    if parts.username or parts.password:
        raise ForbiddenUrlError("URLs with credentials in them are refused")
    port = port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    if not addresses:
        raise DownloadError(f"{host} has no address")
    # Only the host and port as written are trusted: a name that merely resolves to an
    # allowlisted mirror's address is vetted like any other.
    if not _allowed(policy, scheme, _canonical_host(host), port):
        bad = [a for a in addresses if not is_public(a)]
        if bad:
            raise ForbiddenUrlError(
                f"refusing {host}:{port}: it resolves to an address that is not globally "
                f"reachable ({bad[0]}); add {host}:{port} to store.url_allowlist if it is "
                "your mirror"
            )
    return scheme, host, port, addresses[0]


def display(url: str) -> str:
    """The URL for a message: no query or fragment (they may carry access tokens), and
    control or non-ASCII characters escaped."""
    shown = url.split("#", 1)[0].split("?", 1)[0]
    return ascii(shown)[1:-1]


def download(
    url: str,
    dest: Path,
    sha256: str,
    policy: UrlPolicy,
    *,
    progress: Progress | None = None,
    resolve: Resolver = system_resolver,
    attempts: int = 5,
    timeout: float = 30.0,
) -> None:
    """Fetch ``url`` into ``dest``, resuming ``dest.part`` across dropped connections, and
    check the SHA-256 before ``dest`` appears. Raises on failure; the partial file stays for
    the next try."""
    partial = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for _ in range(attempts):
        try:
            _fetch(url, partial, policy, progress=progress, resolve=resolve, timeout=timeout)
            break
        except (httpx.TransportError, DownloadError) as exc:
            last_error = exc
    else:
        raise DownloadError(
            f"download of {display(url)} failed after {attempts} attempts: {_reason(last_error)}"
        )
    if _sha256(partial) != sha256.lower():
        partial.unlink(missing_ok=True)
        # The fetched file's digest is never shown: pasting it into the catalog would turn
        # whatever the server sent into a trusted model.
        raise DownloadError(
            f"{display(url)}: the file does not match the expected SHA-256 {sha256}; "
            "it was discarded"
        )
    partial.replace(dest)


def _reason(error: Exception | None) -> str:
    if isinstance(error, BastionError):
        return error.message
    return error.__class__.__name__ if error else "unknown error"


def _fetch(
    url: str,
    partial: Path,
    policy: UrlPolicy,
    *,
    progress: Progress | None,
    resolve: Resolver,
    timeout: float,
) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, address = vet(url, policy, resolve)
        parts = urlsplit(url)
        target = f"{scheme}://{_bracket(address)}:{port}{parts.path or '/'}"
        if parts.query:
            target += f"?{parts.query}"
        default = 443 if scheme == "https" else 80
        headers = {
            "Host": _bracket(host) + ("" if port == default else f":{port}"),
            "Accept-Encoding": "identity",
        }
        if have:
            headers["Range"] = f"bytes={have}-"
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        with (
            httpx.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream("GET", target, headers=headers, extensions=extensions) as response,
        ):
            if response.is_redirect:
                try:
                    url = urljoin(url, response.headers.get("location", ""))
                except ValueError:
                    raise ForbiddenUrlError(
                        f"{host} redirected to something that is not a valid URL"
                    ) from None
                continue
            if response.status_code == 416 and have:
                return  # already complete
            if response.status_code not in (200, 206):
                raise DownloadError(f"{host} answered HTTP {response.status_code}")
            if response.status_code == 200:
                have = 0  # the server ignored Range: start over
            total = _total(response, have)
            if total is not None and total > policy.max_bytes:
                raise DownloadError(f"the file is {total} bytes, over store.max_download_bytes")
            with partial.open("ab" if have else "wb") as out:
                for block in response.iter_bytes(CHUNK):
                    have += len(block)
                    if have > policy.max_bytes:
                        raise DownloadError("the file is over store.max_download_bytes")
                    out.write(block)
                    if progress:
                        progress(have, total)
            if total is not None and have < total:
                raise DownloadError(f"connection closed at {have} of {total} bytes")
            return
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects")


def _total(response: httpx.Response, have: int) -> int | None:
    if response.status_code == 206:
        crange = response.headers.get("content-range", "")
        if "/" in crange and crange.rsplit("/", 1)[1].isdigit():
            return int(crange.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    return have + int(length) if length and length.isdigit() else None


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * CHUNK):
            digest.update(block)
    return digest.hexdigest()
