"""The HTTP protocol bastion's listeners speak: uvicorn's httptools protocol with limits on
the request head and on open connections, a TLS handshake with a deadline on the HTTPS
listener, and there the client certificate's identity.

uvicorn bounds neither the size of a request head nor the time a client may take to send it,
so a client trickling one header byte every few seconds holds a connection open for as long
as it likes (slowloris). Here a head must be complete within ``header_timeout`` seconds of the
connection opening or of its first byte, or the client gets 408 and the connection closes;
a head larger than ``max_header_bytes`` (request line plus headers) gets 431. Bytes are
counted as they arrive, so a single endless header line is refused before httptools has
buffered more than the limit, and parsed heads are measured again before any app code runs.
Whatever the parser refuses (a malformed request line, header or chunked framing) gets 400 in
the OpenAI envelope, like the other refusals, and the connection closes.

uvicorn's TLS runs asyncio's handshake with its 60-second default and lets every connection
in, so idle connections that never send a ClientHello could pile up until no file descriptor
was left. The HTTPS listener therefore accepts connections here (``TlsListener``), counts each
against the listener's caps at once, and runs the handshake under ``tls_handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from bastion.api.connections import ConnectionGate, Refusal, RefusalReport
from bastion.api.errors import log_unhandled
from bastion.errors import (
    BastionError,
    HeadersTooLargeError,
    MalformedHttpError,
    RequestTimeoutError,
    TooManyConnectionsError,
)

log = logging.getLogger(__name__)

LINGER = 2.0
"""Seconds a refused connection is kept half-open so that the refusal reaches the client."""

ACCEPT_RETRY = 1.0
"""Seconds the HTTPS listener waits after a failed accept (as asyncio's own servers do)."""


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int = 16 * 1024
    timeout: float = 10.0


@dataclass(frozen=True)
class Guards:
    """What one listener enforces; its gate counts that listener's connections only."""

    head: HeadLimits
    gate: ConnectionGate
    report: RefusalReport
    tls_handshake_timeout: float = 5.0


def peer_host(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


class _Refused(Exception):  # noqa: N818 - a signal through httptools, not an error
    """Raised from a parser callback to stop parsing; httptools wraps it and uvicorn then
    calls ``send_400_response``, which sends this refusal instead."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """The clock runs whenever the client owes the server bytes and no response is being
    written: from the connection opening, and from any byte that arrives while the server is
    not answering (a new head, blank lines, leftovers of a body nobody reads). It stops when a
    head is complete; body time belongs to the body limit middleware. A refusal that comes
    while earlier pipelined responses are still being written waits for them."""

    guards: ClassVar[Guards]

    _admitted = False
    _peer = "unknown"
    _reading_head = True
    _begun = False
    """A head has begun (its first bytes may have arrived behind another request's)."""
    _head_bytes = 0
    _trailer_bytes = 0
    _timer: asyncio.TimerHandle | None = None
    _refusal: BastionError | None = None
    _pending: BastionError | None = None
    _discarding = False

    @property
    def limits(self) -> HeadLimits:
        return self.guards.head

    def adopt(self, peer: str) -> None:
        """Take over a connection already admitted through the gate (by the TLS handshake)."""
        self._admitted = True
        self._peer = peer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self._admitted:
            peer = peer_host(transport)
            reason = self.guards.gate.admit(peer)
            if reason is not None:
                self._turn_away(transport, peer, reason)
                return
            self.adopt(peer)
        super().connection_made(transport)
        self._arm()

    @property
    def peer(self) -> str:
        return self._peer

    def release(self) -> None:
        """Give the connection's place back, once: after a failed handshake or at its end."""
        if self._admitted:
            self._admitted = False
            self.guards.gate.release(self._peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # turned away at the door: uvicorn never saw this connection
        self.release()
        self._disarm()
        super().connection_lost(exc)

    def _turn_away(self, transport: asyncio.Transport, peer: str, reason: str) -> None:
        # Written before the client has sent anything, so no unread input can reset the
        # connection under the answer; no lingering either, the descriptor is what is short.
        error = TooManyConnectionsError(
            "Too many open connections; close idle ones or retry later."
        )
        transport.write(_response(error))
        transport.close()
        self.guards.report(Refusal("connection", reason, error.status, peer))

    def data_received(self, data: bytes) -> None:
        if self._discarding or self.transport is None:
            return
        if self._reading_head:
            self._head_bytes += len(data)
        self._feed(data)
        if self._discarding or self.transport.is_closing():
            return  # refused while parsing: that refusal is the answer, nothing to add
        if self._reading_head and self._head_bytes > self.limits.max_bytes:
            self._refuse(self._too_large())
        elif not self._answering():
            self._arm()

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received`` without its log line per malformed request, which a
        flood of them would turn into a flood of lines (refusals are reported sampled)."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.send_400_response("")
        except httptools.HttpParserUpgrade:
            # The request is served as plain HTTP (WebSockets are off, ``ws="none"``); uvicorn
            # would log two unsampled warnings per such request, which a client could flood.
            pass

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
        self._refuse(
            refusal
            or MalformedHttpError(
                "The request is not valid HTTP/1.1: its request line, a header or the "
                "chunked body framing is malformed."
            )
        )

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        if self._timer is None and not self._discarding:
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
        if self._discarding:
            return  # one refusal per connection: it has been answered, or will be
        self.guards.report(Refusal("HTTP request", str(error.code), error.status, self._peer))
        self._disarm()
        self._discarding = True
        if self._answering():
            if self.pipeline or self.cycle.response_started or not self.cycle.more_body:
                # Earlier pipelined requests, or this one, are still being answered: a
                # refusal cannot be spliced into a response, so it follows.
                self._pending = error
                return
            # The body the app is still reading is broken: the app hears a disconnect and
            # its answer is dropped; the client hears why now.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self._send_refusal(error)

    def _send_refusal(self, error: BastionError) -> None:
        self._pending = None
        self.transport.write(_response(error))
        # Closing with unread input would reset the connection and could destroy the
        # response before the client reads it: send it, half-close, and discard what still
        # arrives for a moment (the client's end of file closes the connection sooner).
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()


def _response(error: BastionError) -> bytes:
    """A whole response carrying ``error``'s envelope, after which the connection closes."""
    body = json.dumps(error.envelope()).encode()
    head = [
        STATUS_LINE[error.status],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
    ]
    return b"".join([*head, body])


def common_name(peer: dict[str, Any] | None) -> str | None:
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class ClientCertificateRequiredError(BastionError):
    status = 403
    type = "invalid_request_error"
    code = "client_certificate_required"


NO_CLIENT_CERTIFICATE = "the client sent no certificate (PEER_DID_NOT_RETURN_A_CERTIFICATE)"


class TlsIdentityProtocol(GuardedHttpProtocol):
    """Adds the verified client certificate's common name to the scope as
    ``extensions.tls.client_cn`` (uvicorn does not pass the peer certificate on), and the
    server certificate's names as ``extensions.tls.server_names`` (trusted Host values, see
    ``TrustedHostMiddleware``).

    With ``client_cert_required`` (tls.client_ca set), a client that completed the handshake
    without a certificate (the context asks for one but lets the handshake finish, so the
    refusal can be put in words) gets 403 ``client_certificate_required`` before any of its
    bytes are read; a certificate it does send was verified in the handshake."""

    server_names: ClassVar[frozenset[str]] = frozenset()
    client_cert_required: ClassVar[bool] = False
    _client_cn: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        peer_cert = ssl_object.getpeercert() if ssl_object else None
        self._client_cn = common_name(peer_cert)
        if self.client_cert_required and not peer_cert and self.transport is not None:
            self.guards.report(Refusal("TLS handshake", NO_CLIENT_CERTIFICATE, 403, self.peer))
            self._disarm()
            self._discarding = True
            self._send_refusal(
                ClientCertificateRequiredError(
                    "This HTTPS listener requires a client certificate issued by its CA "
                    "(tls.client_ca); none was sent. Issue one with `bastion certs issue NAME`."
                )
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        tls: dict[str, Any] = {"server_names": self.server_names}
        if self._client_cn is not None:
            tls["client_cn"] = self._client_cn
        self.scope["extensions"] = {"tls": tls}  # type: ignore[dict-item]


class TlsListener:
    """Accepts the HTTPS listener's connections itself: each is counted against the gate the
    moment it is accepted, then handed to the TLS layer under the handshake deadline. The
    HTTP protocol sees only connections whose handshake succeeded. It stands in for the
    asyncio server uvicorn would create (uvicorn calls ``close`` and ``wait_closed``)."""

    def __init__(
        self,
        sock: socket.socket,
        http: Callable[[], GuardedHttpProtocol],
        context: ssl.SSLContext,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.sock = sock
        self.http = http
        self.context = context
        self.loop = loop
        self.handshakes: set[asyncio.Task[None]] = set()
        self.accepting = loop.create_task(self._accept())

    def close(self) -> None:
        self.accepting.cancel()
        for task in self.handshakes:
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.wait([self.accepting])

    async def _accept(self) -> None:
        while True:
            try:
                conn, address = await self.loop.sock_accept(self.sock)
            except OSError as exc:
                # Out of descriptors or similar: back off instead of spinning on the error.
                log.error("cannot accept an HTTPS connection: %s", exc.strerror)  # noqa: TRY400
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            protocol = self.http()
            peer = str(address[0]) if isinstance(address, tuple) else "unknown"
            reason = protocol.guards.gate.admit(peer)
            if reason is not None:
                conn.close()  # no TLS yet, so nothing to answer with: just hang up
                protocol.guards.report(Refusal("connection", reason, 0, peer))
                continue
            protocol.adopt(peer)
            task = self.loop.create_task(self._handshake(conn, protocol))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, conn: socket.socket, protocol: GuardedHttpProtocol) -> None:
        guards = protocol.guards
        timeout = guards.tls_handshake_timeout
        established = False
        try:
            async with asyncio.timeout(timeout):
                # asyncio's own deadline is only a backstop; the timeout above names it.
                await self.loop.connect_accepted_socket(
                    lambda: protocol,
                    conn,
                    ssl=self.context,
                    ssl_handshake_timeout=timeout + 1,
                )
            established = True
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            guards.report(_handshake_refusal(exc, protocol.peer, timeout))
        except Exception as exc:  # noqa: BLE001 - a task nobody awaits: say so, then clean up
            log_unhandled(exc)
        finally:
            # Unless the HTTP protocol owns the connection now (its end releases the place),
            # nothing else will close the socket or give the place back; also when the server
            # is stopping (cancelled). The TLS layer has closed its transport already.
            if not established:
                conn.close()
                protocol.release()


HANDSHAKE_REASONS = {
    # Certificate failures only: the others (HTTP_REQUEST, WRONG_VERSION_NUMBER, ...) are
    # logged and audited as OpenSSL names them, which alerting may already match on.
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "CERTIFICATE_VERIFY_FAILED": "the client's certificate did not verify",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust the server's CA (give it tls/ca.crt)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client rejected the server's certificate "
    "(a name it does not list, or a CA it does not trust)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected the server's certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "the client rejected the server's certificate",
}


def handshake_failure(exc: ssl.SSLError) -> str:
    """OpenSSL's reason (a fixed name such as CERTIFICATE_VERIFY_FAILED) in words, with the
    name kept for searching; a failed verification adds OpenSSL's verdict (``certificate
    has expired``, ``certificate revoked``, ``unable to get local issuer certificate``)."""
    code = exc.reason or "unknown"
    words = HANDSHAKE_REASONS.get(code, "")
    verdict = getattr(exc, "verify_message", None)
    if isinstance(exc, ssl.SSLCertVerificationError) and verdict:
        words = f"{words}: {verdict}" if words else str(verdict)
    return f"{words} ({code})" if words else code


def _handshake_refusal(exc: Exception, peer: str, timeout: float) -> Refusal:
    if isinstance(exc, TimeoutError):
        return Refusal("TLS handshake", f"not complete within {timeout:g}s", 408, peer)
    if isinstance(exc, ssl.SSLError):
        return Refusal("TLS handshake", f"failed: {handshake_failure(exc)}", 0, peer)
    return Refusal("TLS handshake", "connection closed during the handshake", 0, peer)


def protocol_class(
    guards: Guards,
    *,
    tls_identity: bool = False,
    server_names: frozenset[str] = frozenset(),
    client_cert_required: bool = False,
) -> type[GuardedHttpProtocol]:
    """A protocol class for uvicorn's ``http=`` option, carrying this listener's guards (and
    on the HTTPS listener the certificate's names and whether a client certificate is due)."""
    if not tls_identity:
        return type(GuardedHttpProtocol.__name__, (GuardedHttpProtocol,), {"guards": guards})
    attrs = {
        "guards": guards,
        "server_names": server_names,
        "client_cert_required": client_cert_required,
    }
    return type(TlsIdentityProtocol.__name__, (TlsIdentityProtocol,), attrs)
