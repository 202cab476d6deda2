"""What a listener lets in: open-connection caps, and the report of what it turns away.

A flood of idle connections on the HTTPS port once exhausted the process's file descriptors
and took the plain port down with it. Each listener now admits a connection only while it
holds fewer than ``server.max_connections`` in total and ``server.max_connections_per_client``
from that client; TLS handshakes still in progress count. An IPv4 client is its address, an
IPv6 client its /64 network (one host is commonly handed a whole /64, so counting single
addresses would let it open a cap's worth of connections from each of 2^64 of them).

Refusals (connections over a cap, failed or slow TLS handshakes, HTTP heads the protocol
refuses) are logged and audited sampled: the first of each kind at once, the rest of the same
kind within ``every`` seconds as one line and one audit record with their count. A flood can
then neither fill the log nor rotate real records out of the audit log, and nothing is lost.
A summary also says how many distinct addresses it covers and which sent the most.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

LISTENER_FULL = "listener at max_connections"
CLIENT_FULL = "client address at max_connections_per_client"

REPORT_EVERY = 10.0
"""Seconds over which refusals of one kind are summed into one log line and audit record."""

TOP_CLIENTS = 5
"""Addresses a summary names, those refused most often in its window."""

IPV6_CLIENT_PREFIX = 64


def client_key(address: str) -> str:
    """What the per-client cap counts ``address`` as: an IPv4 address as itself (also when
    IPv4-mapped into IPv6), an IPv6 address as its /64 network. Anything else is its own
    key."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # a link-local zone is no client
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


@dataclass(frozen=True)
class ConnectionLimits:
    total: int
    per_client: int


class ConnectionGate:
    """The open connections of one listener, in total and per client (``client_key``)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self._by_client: dict[str, int] = {}

    def admit(self, client: str) -> str | None:
        """Count a new connection from ``client``; returns why it is refused, or None."""
        if self.open >= self.limits.total:
            return LISTENER_FULL
        key = client_key(client)
        held = self._by_client.get(key, 0)
        if held >= self.limits.per_client:
            return CLIENT_FULL
        self.open += 1
        self._by_client[key] = held + 1
        return None

    def release(self, client: str) -> None:
        """An admitted connection from ``client`` has closed."""
        self.open -= 1
        key = client_key(client)
        held = self._by_client.pop(key) - 1
        if held:
            self._by_client[key] = held

    def held_by(self, client: str) -> int:
        return self._by_client.get(client_key(client), 0)


@dataclass(frozen=True)
class Refusal:
    """One connection or request turned away below the app. Every field is chosen by bastion
    or read from the socket: no byte the client sent."""

    route: str
    """What was refused: ``connection``, ``TLS handshake`` or ``HTTP request``."""
    reason: str
    status: int
    """The HTTP status the client was sent; 0 when none could be (TLS, a closed socket)."""
    client: str


AuditSink = Callable[[dict[str, Any]], None]
Schedule = Callable[[float, Callable[[], None]], object]


def _call_later(delay: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


@dataclass
class _Window:
    opened: float
    held: int = 0
    last: Refusal | None = None
    timer: bool = False
    clients: Counter[str] = field(default_factory=Counter)
    """The held-back refusals per address."""


class RefusalReport:
    """Logs and audits refusals, at most one line and one record per kind (route and reason)
    per ``every`` seconds; the ones held back go out together, with their count, when the
    window closes (``schedule`` runs that) or at ``flush``."""

    def __init__(
        self,
        audit: AuditSink | None,
        *,
        every: float = REPORT_EVERY,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule = _call_later,
    ) -> None:
        self.audit = audit
        self.every = every
        self._clock = clock
        self._schedule = schedule
        self._windows: dict[tuple[str, str], _Window] = {}

    def __call__(self, refusal: Refusal) -> None:
        key = (refusal.route, refusal.reason)
        now = self._clock()
        window = self._windows.get(key)
        if window is None or (now - window.opened >= self.every and not window.held):
            self._windows[key] = _Window(opened=now)
            self._emit(refusal, 1)
            return
        window.held += 1
        window.last = refusal
        window.clients[refusal.client] += 1
        if not window.timer:
            window.timer = True
            self._schedule(max(0.0, window.opened + self.every - now), lambda: self._close(key))

    def flush(self) -> None:
        """Report every refusal still held back (at shutdown)."""
        for key in list(self._windows):
            self._close(key)

    def _close(self, key: tuple[str, str]) -> None:
        window = self._windows[key]
        window.timer = False
        if window.held and window.last is not None:
            self._emit(window.last, window.held, window.clients)
            self._windows[key] = _Window(opened=self._clock())

    def _emit(self, refusal: Refusal, count: int, clients: Counter[str] | None = None) -> None:
        top = (clients or Counter()).most_common(TOP_CLIENTS)
        if clients is None:
            log.warning("refused %s from %s: %s", refusal.route, refusal.client, refusal.reason)
        else:
            log.warning(
                "refused %s: %s; %d more times within %gs, the last from %s; "
                "from %d distinct addresses, most: %s",
                refusal.route,
                refusal.reason,
                count,
                self.every,
                refusal.client,
                len(clients),
                ", ".join(f"{client} ({n})" for client, n in top),
            )
        if self.audit is None:
            return
        record: dict[str, Any] = {
            "time": dt.datetime.now(tz=dt.UTC).isoformat(timespec="milliseconds"),
            "request_id": None,
            "identity": None,
            "route": refusal.route,
            "status": refusal.status,
            "client": refusal.client,
            "reason": refusal.reason,
            "count": count,
        }
        if clients is not None:
            record["clients"] = len(clients)
            record["top_clients"] = [{"client": client, "count": n} for client, n in top]
        try:
            self.audit(record)
        except OSError as exc:
            # Called from transport callbacks: a full disk must not break the listener.
            log.error("cannot audit a refused %s: %s", refusal.route, exc.strerror)  # noqa: TRY400
