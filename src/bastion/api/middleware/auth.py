"""Authentication: every route needs a caller identity except an explicit allowlist.

Decided on the normalised ASGI path (never on a URL rebuilt from Host): ``//v1/models``,
``/v1/../v1/models`` and trailing slashes all normalise to the route they reach. Identities:
``loopback`` (with ``auth.loopback_bypass``), ``key:NAME`` for a valid bearer key,
``cert:CN`` for a verified client certificate. With no keys configured a remote caller is
refused (fail closed). Malformed or non-ASCII headers get 401, never 500.

Authorisation happens here too, in one place: ``required_scope`` maps the normalised path to
``admin`` (``/api/*`` and ``/metrics``) or ``inference`` (everything else). Keys carry their
scopes; loopback (while bypassed) and disabled auth have every scope; a client certificate is
inference only unless its CN is in ``auth.admin_certs``. A missing scope is a 403.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import posixpath
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from bastion.api.errors import send_error
from bastion.errors import BastionError, InsufficientScopeError
from bastion.security.api_keys import ADMIN, ALL_SCOPES, INFERENCE, KeyStore

log = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/health"})
ADMIN_PREFIX = "/api"
ADMIN_PATHS = frozenset({"/metrics"})
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


def required_scope(path: str) -> str | None:
    """The scope a request for ``path`` needs (None for the public paths). Both the raw and
    the normalised path are checked (case-folded), so no spelling of an admin route reaches
    it as inference."""
    if normalise(path) in PUBLIC_PATHS:
        return None
    for candidate in {path.lower(), normalise(path).lower()}:
        if candidate in ADMIN_PATHS or candidate == ADMIN_PREFIX:
            return ADMIN
        if candidate.startswith(ADMIN_PREFIX + "/"):
            return ADMIN
    return INFERENCE


@dataclass(frozen=True)
class Caller:
    """Who is calling and what it may do."""

    identity: str
    scopes: frozenset[str]


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: KeyStore,
        *,
        loopback_bypass: bool,
        disabled: bool,
        admin_certs: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.keys = keys
        self.loopback_bypass = loopback_bypass
        self.disabled = disabled
        self.admin_certs = admin_certs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        caller = self._identify(scope)
        if isinstance(caller, BastionError):
            reason = caller.reason if isinstance(caller, AuthenticationError) else "other"
            state["auth_failure"] = reason
            await send_error(send, caller)
            return
        state["identity"] = caller.identity
        needed = required_scope(scope["path"])
        if needed is not None and needed not in caller.scopes:
            state["auth_failure"] = "insufficient_scope"
            await send_error(
                send,
                InsufficientScopeError(
                    f"This route needs the '{needed}' scope, which this credential lacks "
                    f"(bastion keys create NAME --scope {needed})."
                ),
            )
            return
        await self.app(scope, receive, send)

    def _identify(self, scope: Scope) -> Caller | BastionError:
        tls = (scope.get("extensions") or {}).get("tls") or {}
        if cn := tls.get("client_cn"):
            # Verified in the handshake: the credential. Admin only when named in settings.
            admin = cn in self.admin_certs
            return Caller(f"cert:{cn}", ALL_SCOPES if admin else frozenset({INFERENCE}))
        if self.disabled:
            # announced at start and hourly by the app's lifespan
            return Caller("anonymous", ALL_SCOPES)
        client = scope.get("client")
        if self.loopback_bypass and client and is_loopback(client[0]):
            return Caller("loopback", ALL_SCOPES)
        if normalise(scope["path"]) in PUBLIC_PATHS:
            return Caller("public", frozenset())
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
        key = self.keys.identify(token.strip())
        if key is None:
            return AuthenticationError("Invalid API key.", reason="invalid")
        return Caller(f"key:{key.name}", key.scopes)
