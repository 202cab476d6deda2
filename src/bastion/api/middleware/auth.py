"""Authentication: every route needs a caller identity except an explicit allowlist.

Decided on the normalised ASGI path (never on a URL rebuilt from Host): ``//v1/models``,
``/v1/../v1/models`` and trailing slashes all normalise to the route they reach. Identities:
``loopback`` (with ``auth.loopback_bypass``), ``key:NAME`` for a valid bearer key. With no
keys configured a remote caller is refused (fail closed). Malformed or non-ASCII headers get
401, never 500.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import posixpath

from starlette.types import ASGIApp, Receive, Scope, Send

from bastion.api.errors import send_error
from bastion.errors import BastionError
from bastion.security.api_keys import KeyStore

log = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/health"})
DISABLED_WARNING_EVERY = 3600.0


class AuthenticationError(BastionError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        """For metrics: missing, malformed, no_keys or invalid."""

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="bastion"'}


def auth_disabled() -> bool:
    """``BASTION_DISABLE_AUTH=1`` opens the door (logged loudly)."""
    return os.environ.get("BASTION_DISABLE_AUTH", "") == "1"


def normalise(path: str) -> str:
    cleaned = posixpath.normpath("/" + path.lstrip("/")) if path else "/"
    return "/" if cleaned in (".", "//") else cleaned


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class AuthMiddleware:
    def __init__(
        self, app: ASGIApp, keys: KeyStore, *, loopback_bypass: bool, disabled: bool
    ) -> None:
        self.app = app
        self.keys = keys
        self.loopback_bypass = loopback_bypass
        self.disabled = disabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        identity = self._identify(scope)
        if isinstance(identity, BastionError):
            reason = identity.reason if isinstance(identity, AuthenticationError) else "other"
            scope.setdefault("state", {})["auth_failure"] = reason
            await send_error(send, identity)
            return
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)

    def _identify(self, scope: Scope) -> str | BastionError:
        tls = (scope.get("extensions") or {}).get("tls") or {}
        if tls.get("client_cn"):
            return f"cert:{tls['client_cn']}"  # verified in the handshake: the credential
        if self.disabled:
            return "anonymous"  # announced at start and hourly by the app's lifespan
        client = scope.get("client")
        if self.loopback_bypass and client and is_loopback(client[0]):
            return "loopback"
        if normalise(scope["path"]) in PUBLIC_PATHS:
            return "public"
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        if header is None:
            return AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <key>'.", reason="missing"
            )
        scheme, _, token = header.partition(b" ")
        if (
            scheme.lower() != b"bearer"
            or not token
            or not token.isascii()
            or not (header.isascii())
        ):
            return AuthenticationError(
                "Malformed Authorization header; expected Bearer.", reason="malformed"
            )
        if not self.keys.active():
            return AuthenticationError(
                "No API keys are configured on this server; remote "
                "callers are refused (bastion keys create NAME).",
                reason="no_keys",
            )
        name = self.keys.identify(token.strip())
        if name is None:
            return AuthenticationError("Invalid API key.", reason="invalid")
        return f"key:{name}"
