"""DNS rebinding: on a loopback listener, the Host header must be a loopback name or address
(or a configured trusted host); a page on another origin that rebinds its name to 127.0.0.1
gets 403.

On the HTTPS listener the names in the server certificate (its subject alternative names,
which the listener puts in the scope as ``extensions.tls.server_names``) are trusted too:
they are the operator's own names, and a browser reaches that listener under a name only if
the certificate lists it, so a rebinding page (which cannot hold a certificate of this CA for
its name) never gets that far. On the plain listener nothing vouches for a name, so there
they count only if listed in ``server.trusted_hosts``: a page that rebinds ``bastion.lan``
over plain HTTP would otherwise pass."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from bastion.api.errors import send_error
from bastion.api.middleware.auth import is_loopback
from bastion.errors import BastionError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class UntrustedHostError(BastionError):
    status = 403
    type = "invalid_request_error"
    code = "untrusted_host"


def host_name(value: str) -> str:
    if value.startswith("["):  # [::1]:8000
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def certificate_names(scope: Scope) -> frozenset[str]:
    """The server certificate's names when the request came over the HTTPS listener."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    names = tls.get("server_names")
    return names if isinstance(names, frozenset) else frozenset()


class TrustedHostMiddleware:
    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        self.app = app
        self.trusted = frozenset(h.lower() for h in trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_loopback((scope.get("server") or ("",))[0]):
            host = ""
            for name, value in scope.get("headers", []):
                if name == b"host":
                    host = value.decode("latin-1").strip().lower()
                    break
            name = host_name(host)
            if not (
                name in LOOPBACK_NAMES
                or is_loopback(name)
                or name in self.trusted
                or name in certificate_names(scope)
            ):
                await send_error(
                    send,
                    UntrustedHostError(
                        "This Host is not served here (loopback listener; add it to "
                        "server.trusted_hosts if it is yours)."
                    ),
                )
                return
        await self.app(scope, receive, send)
