"""URL pulls: streamed, resumable with HTTP Range, size-capped, and refusing server-side
request forgery.

Every hop (the URL and each redirect) is resolved and vetted before anything connects: https
only (unless ``store.allow_http``), and no loopback, link-local, private, multicast or reserved
address unless the host is in ``store.url_allowlist``. The connection then goes to the vetted
address itself (TLS still verifies the host name), so a second DNS answer cannot redirect it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from bastion.errors import BastionError

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


@dataclass(frozen=True)
class UrlPolicy:
    allow_http: bool = False
    allowlist: frozenset[str] = frozenset()
    max_bytes: int = 256 * 1024**3


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DownloadError(f"cannot resolve {host}: {exc.strerror}") from None
    return sorted({str(info[4][0]) for info in infos})


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def vet(url: str, policy: UrlPolicy, resolve: Resolver) -> tuple[str, str, int, str]:
    """(scheme, host, port, address to connect to) for an allowed URL, else ForbiddenUrlError."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("https", "http") or not host:
        raise ForbiddenUrlError(f"only http(s) URLs with a host can be pulled, not {url!r}")
    if scheme == "http" and not policy.allow_http:
        raise ForbiddenUrlError(f"refusing plain-http URL {url}; use https or set store.allow_http")
    if parts.username or parts.password:
        raise ForbiddenUrlError("URLs with credentials in them are refused")
    port = parts.port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    if not addresses:
        raise DownloadError(f"{host} has no address")
    if host not in policy.allowlist:
        bad = [a for a in addresses if _forbidden(a) and a not in policy.allowlist]
        if bad:
            raise ForbiddenUrlError(
                f"refusing {host}: it resolves to a loopback, link-local or private address "
                f"({bad[0]}); add the host to store.url_allowlist if it is your mirror"
            )
    return scheme, host, port, addresses[0]


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
            f"download of {url} failed after {attempts} attempts: {_reason(last_error)}"
        )
    actual = _sha256(partial)
    if actual != sha256.lower():
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: SHA-256 mismatch (expected {sha256}, got {actual}); the file was discarded"
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
        headers = {
            "Host": host if port in (80, 443) else f"{host}:{port}",
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
                url = urljoin(url, response.headers.get("location", ""))
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
