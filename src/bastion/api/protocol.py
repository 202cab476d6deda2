"""The HTTP protocol bastion's listeners speak: uvicorn's httptools protocol with limits on
the request head, and on the HTTPS listener the client certificate's identity.

uvicorn bounds neither the size of a request head nor the time a client may take to send it,
so a client trickling one header byte every few seconds holds a connection open for as long
as it likes (slowloris). Here a head must be complete within ``header_timeout`` seconds of the
connection opening or of its first byte, or the client gets 408 and the connection closes;
a head larger than ``max_header_bytes`` (request line plus headers) gets 431. Bytes are
counted as they arrive, so a single endless header line is refused before httptools has
buffered more than the limit, and parsed heads are measured again before any app code runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from bastion.errors import BastionError, HeadersTooLargeError, RequestTimeoutError

log = logging.getLogger(__name__)


LINGER = 2.0
"""Seconds a refused connection is kept half-open so that the refusal reaches the client."""


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int = 16 * 1024
    timeout: float = 10.0


class _Refused(Exception):  # noqa: N818 - a signal through httptools, not an error
    """Raised from a parser callback to stop parsing; httptools wraps it and uvicorn then
    calls ``send_400_response``, which sends this refusal instead."""


class GuardedHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[HeadLimits] = HeadLimits()

    _reading_head = True
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None
    _refusal: BastionError | None = None
    _discarding = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.limits.timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._reading_head
            and self._head_bytes > self.limits.max_bytes
            and not self.transport.is_closing()
        ):
            self._refuse(self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._stop_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_bytes:
            self._refusal = self._too_large()
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # Whatever arrives next on this connection is the next request's head.
        self._reading_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(refusal)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head or self.transport.is_closing():
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: just hang up
            return
        self._refuse(
            RequestTimeoutError(
                f"The request head was not complete within {self.limits.timeout:g} seconds."
            )
        )

    def _too_large(self) -> HeadersTooLargeError:
        return HeadersTooLargeError(
            f"The request line and headers are larger than the limit of "
            f"{self.limits.max_bytes} bytes."
        )

    def _refuse(self, error: BastionError) -> None:
        client = "%s:%d" % self.client if self.client else "unknown client"  # noqa: UP031
        log.warning("refused %s: %s (%d)", client, error.code, error.status)
        self._stop_head_timer()
        self._discarding = True
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head while an earlier response is still being written: the
            # refusal cannot be interleaved with it, so finish that response, then hang up.
            self.cycle.keep_alive = False
            return
        body = json.dumps(error.envelope()).encode()
        head = [
            STATUS_LINE[error.status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join([*head, body]))
        # Closing with unread input would reset the connection and could destroy the
        # response before the client reads it: send it, half-close, and discard what still
        # arrives for a moment (the client's end of file closes the connection sooner).
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()


def common_name(peer: dict[str, Any] | None) -> str | None:
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class TlsIdentityProtocol(GuardedHttpProtocol):
    """Adds the verified client certificate's common name to the scope as
    ``extensions.tls.client_cn`` (uvicorn does not pass the peer certificate on)."""

    _client_cn: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self._client_cn = common_name(ssl_object.getpeercert()) if ssl_object else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._client_cn is not None:
            self.scope["extensions"] = {"tls": {"client_cn": self._client_cn}}


def protocol_class(limits: HeadLimits, *, tls_identity: bool) -> type[GuardedHttpProtocol]:
    """A protocol class for uvicorn's ``http=`` option, carrying these limits."""
    base = TlsIdentityProtocol if tls_identity else GuardedHttpProtocol
    return type(base.__name__, (base,), {"limits": limits})
