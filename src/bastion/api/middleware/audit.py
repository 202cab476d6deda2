"""Write one audit record per request after its response is complete (streams included)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.metrics import Metrics
from bastion.security.audit import AuditTrail

CONTENT = ("prompt", "completion")
"""Present only with ``audit.include_content``."""


class AuditMiddleware:
    def __init__(self, app: ASGIApp, log: AuditTrail, metrics: Metrics) -> None:
        self.app = app
        self.log = log
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception:
            status = status or 500  # failed before answering: not the client's 499
            raise
        finally:
            state: dict[str, Any] = scope.get("state", {})
            usage: dict[str, Any] = state.get("audit", {})
            seconds = time.perf_counter() - started
            self.metrics.observe(
                {**usage, "status": status or 499, "auth_failure": state.get("auth_failure")},
                seconds,
            )
            self.log.append(
                {
                    "time": dt.datetime.now(tz=dt.UTC).isoformat(timespec="milliseconds"),
                    "request_id": state.get("request_id"),
                    "identity": state.get("identity"),
                    "route": f"{scope['method']} {scope['path']}",
                    # The socket peer: who to block when the records are refusals.
                    "client": (scope.get("client") or (None,))[0],
                    "model": usage.get("model"),
                    "model_digest": usage.get("model_digest"),
                    "status": status or 499,
                    "prompt_tokens": usage.get("prompt_tokens"),
                    "completion_tokens": usage.get("completion_tokens"),
                    "duration_ms": round(seconds * 1000, 1),
                    **{key: usage[key] for key in CONTENT if key in usage},
                }
            )
