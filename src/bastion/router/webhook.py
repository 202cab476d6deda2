"""Tell an operator's endpoint about each load and unload, signed, in the background.

The body is JSON ``{model, action, duration_seconds, result, error?, time}``; the header
``X-Bastion-Signature: sha256=<hex HMAC-SHA256 of the body>`` uses the secret from the
environment variable that ``router.webhook_secret_env`` names. Delivery never blocks a load or
a swap: it runs as its own task, retries a few times with backoff, and logs what failed (the
endpoint's scheme, host and port, never its query or the secret).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from bastion.settings import RouterSettings

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Bastion-Signature"


def sign(body: bytes, secret: bytes) -> str:
    """The header value a receiver recomputes to check a delivery."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Event:
    model: str
    action: str
    """``load`` or ``unload``."""
    duration_seconds: float
    error: str | None = None

    def body(self) -> bytes:
        data: dict[str, Any] = {
            "model": self.model,
            "action": self.action,
            "duration_seconds": round(self.duration_seconds, 3),
            "result": "ok" if self.error is None else "error",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.error is not None:
            data["error"] = self.error
        return json.dumps(data, separators=(",", ":")).encode()


def where(url: str) -> str:
    """The endpoint's scheme, host and port, for logs (its path and query may carry a token)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(a malformed URL)"
    return f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")


class Webhook:
    def __init__(
        self,
        url: str,
        secret: bytes | None,
        *,
        attempts: int = 4,
        backoff: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._secret = secret
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._where = where(url)

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> Webhook | None:
        """The configured webhook; None when there is none, or when its secret is missing
        (sending unsigned events to an endpoint that expects signed ones helps nobody)."""
        if not settings.webhook_url:
            return None
        try:
            httpx.URL(settings.webhook_url)
        except (httpx.InvalidURL, ValueError) as exc:
            # The reason names the offending character or host, not the query.
            log.error(  # noqa: TRY400 - a configuration mistake, not a bug: no traceback
                "router.webhook_url (%s) cannot be used: %s; no webhook events will be sent",
                where(settings.webhook_url),
                exc,
            )
            return None
        secret: bytes | None = None
        if settings.webhook_secret_env:
            value = os.environ.get(settings.webhook_secret_env, "")
            if not value:
                log.error(
                    "router.webhook_url is set but the environment variable %s that should "
                    "hold its secret is empty: no webhook events will be sent",
                    settings.webhook_secret_env,
                )
                return None
            secret = value.encode()
        return cls(settings.webhook_url, secret)

    def send(self, event: Event) -> None:
        """Deliver ``event`` in the background (call on the event loop)."""
        task = asyncio.get_running_loop().create_task(
            self._deliver(event), name=f"webhook-{event.model}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event: Event) -> None:
        body = event.body()
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        problem = ""
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client:
            for attempt in range(1, self._attempts + 1):
                try:
                    response = await client.post(self._url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                except Exception as exc:  # noqa: BLE001 - logged: a task must not die silently
                    # Not a network failure (a URL httpx cannot encode, say): retrying won't help.
                    log.error(  # noqa: TRY400 - the traceback may quote the URL's query
                        "webhook %s: cannot deliver the %s event of model %s: %s",
                        self._where,
                        event.action,
                        event.model,
                        type(exc).__name__,
                    )
                    return
                else:
                    if response.is_success:
                        return
                    problem = f"HTTP {response.status_code}"
                if attempt < self._attempts:
                    log.warning(
                        "webhook %s (%s %s): attempt %d of %d failed: %s",
                        self._where,
                        event.action,
                        event.model,
                        attempt,
                        self._attempts,
                        problem,
                    )
                    await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        log.error(
            "webhook %s: gave up on the %s event of model %s after %d attempts: %s",
            self._where,
            event.action,
            event.model,
            self._attempts,
            problem,
        )

    async def close(self, grace: float = 2.0) -> None:
        """Give deliveries in progress ``grace`` seconds, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
