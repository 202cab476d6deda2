"""Refuse request bodies over the configured limit with 413, and bodies that take longer than
``timeout`` seconds to arrive with 408, before any route sees them.

The body is buffered (it is bounded by the limit) and replayed to the app; later ``receive``
calls go to the server, so routes can still notice a client disconnect.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.api.errors import send_error
from bastion.errors import (
    BastionError,
    InvalidRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLargeError(
            f"The request body is larger than the limit of {self.max_bytes} bytes."
        )
        declared = _content_length(scope)
        if declared == -1:
            await send_error(send, InvalidRequestError("Invalid Content-Length header."))
            return
        if declared is not None and declared > self.max_bytes:
            await send_error(send, too_large)
            return
        chunks: list[bytes] = []
        size = 0
        outcome: BastionError | None = None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    size += len(body)
                    if size > self.max_bytes:
                        outcome = too_large
                        break
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            outcome = RequestTimeoutError(
                f"The request body was not complete within {self.timeout:g} seconds."
            )
        if outcome is not None:  # sent outside the timeout: a slow reader is not timed twice
            await send_error(send, outcome)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None
