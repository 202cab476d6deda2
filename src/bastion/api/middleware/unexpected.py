"""Turn an exception nothing else handled into a 500 in the OpenAI envelope.

Starlette answers unhandled exceptions in its outermost layer, outside every bastion middleware:
that response carried no ``X-Request-Id``, the audit saw no status (and wrote 499), and the
exception was logged twice. This layer sits inside the request id and audit middleware, so the
500 has the id, is audited as 500, and is logged once with the request's id.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.api.errors import log_unhandled, send_error
from bastion.errors import BastionError


class UnexpectedErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise  # too late for a status: the server closes the connection and logs it
            log_unhandled(exc)
            await send_error(send, BastionError("The server had an internal error."))
