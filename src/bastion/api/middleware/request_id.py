"""Give every request an id: in logs, in the ``X-Request-Id`` response header, in the audit.

The server's own ids are ``req_`` and 32 hex digits. A client may send its own (1 to 128 of
``A-Za-z0-9._:-``) to correlate requests; it is kept with a ``client-`` prefix, so it can never
pass for a server id, and anything else is replaced by a server id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.log import escape, request_id_var

log = logging.getLogger("bastion.access")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
CLIENT_PREFIX = "client-"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %d %.1fms",
                escape(scope["method"]),
                escape(scope["path"]),
                status,
                (time.perf_counter() - started) * 1000,
            )
            request_id_var.reset(token)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return CLIENT_PREFIX + text if _CLIENT_ID.fullmatch(text) else None
    return None
