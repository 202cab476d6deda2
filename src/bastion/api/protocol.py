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
    """The clock runs whenever the client owes the server bytes and no response is being
    written: from the connection opening, and from any byte that arrives while the server is
    not answering (a new head, blank lines, leftovers of a body nobody reads). It stops when a
    head is complete; body time belongs to the body limit middleware. A refusal that comes
    while earlier pipelined responses are still being written waits for them."""

    limits: ClassVar[HeadLimits] = HeadLimits()

    _reading_head = True
    _begun = False
    """A head has begun (its first bytes may have arrived behind another request's)."""
    _head_bytes = 0
    _trailer_bytes = 0
    _timer: asyncio.TimerHandle | None = None
    _refusal: BastionError | None = None
    _pending: BastionError | None = None
    _discarding = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._reading_head and self._head_bytes > self.limits.max_bytes:
            self._refuse(self._too_large())
        elif not self._answering():
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._reading_head:  # a chunked body's trailers: bounded like a head
            self._trailer_bytes += len(name) + len(value) + 4
            if self._trailer_bytes > self.limits.max_bytes:
                self._refusal = self._too_large()
                raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = self._trailer_bytes = 0
        self._disarm()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_bytes:
            self._refusal = self._too_large()
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # Whatever arrives next on this connection is the next request's head.
        self._reading_head = True
        self._begun = False
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._answering() or self.transport.is_closing():
            return
        if self._pending is not None:
            self._send_refusal(self._pending)
        elif self._reading_head and (self._begun or self._head_bytes):
            self._arm()  # a head had begun behind the response just finished

    def send_400_response(self, msg: str) -> None:
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(refusal)

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self.limits.timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._answering() or self.transport.is_closing():
            return  # the client is waiting for us, not the other way round
        if self._reading_head and (self._begun or self._head_bytes):
            self._refuse(
                RequestTimeoutError(
                    f"The request head was not complete within {self.limits.timeout:g} seconds."
                )
            )
        else:
            self.transport.close()  # nothing that could be answered: just hang up

    def _too_large(self) -> HeadersTooLargeError:
        return HeadersTooLargeError(
            f"The request line and headers are larger than the limit of "
            f"{self.limits.max_bytes} bytes."
        )

    def _refuse(self, error: BastionError) -> None:
        client = "%s:%d" % self.client if self.client else "unknown client"  # noqa: UP031
        log.warning("refused %s: %s (%d)", client, error.code, error.status)
        self._disarm()
        self._discarding = True
        if self._answering():
            # Earlier pipelined requests are still being answered: a refusal cannot be
            # spliced into their responses, so it follows them.
            self._pending = error
            return
        self._send_refusal(error)

    def _send_refusal(self, error: BastionError) -> None:
        self._pending = None
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
