"""Connection caps per listener and per client address, and the sampled refusal report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from bastion.api.connections import (
    CLIENT_FULL,
    LISTENER_FULL,
    TOP_CLIENTS,
    ConnectionGate,
    ConnectionLimits,
    Refusal,
    RefusalReport,
    client_key,
)


def test_a_client_at_its_cap_is_refused_while_others_are_admitted() -> None:
    gate = ConnectionGate(ConnectionLimits(total=10, per_client=2))
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") == CLIENT_FULL
    assert gate.admit("10.0.0.2") is None
    assert gate.admit("::1") is None
    assert gate.open == 4


def test_a_full_listener_refuses_every_client() -> None:
    gate = ConnectionGate(ConnectionLimits(total=3, per_client=3))
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert gate.admit(client) is None
    for client in ("10.0.0.1", "10.0.0.4", "fe80::1"):
        assert gate.admit(client) == LISTENER_FULL
    assert gate.open == 3


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::ffff", "2001:db8:1:2::/64"),  # spelling does not matter
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64 is another client
        ("::ffff:10.0.0.1", "10.0.0.1"),  # IPv4 over an IPv6 socket: still the address
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("unknown", "unknown"),
    ],
)
def test_an_ipv6_client_is_its_64_and_an_ipv4_client_its_address(address: str, key: str) -> None:
    assert client_key(address) == key


def test_addresses_of_one_ipv6_64_share_the_per_client_cap() -> None:
    gate = ConnectionGate(ConnectionLimits(total=100, per_client=2))
    assert gate.admit("2001:db8:1:2::1") is None
    assert gate.admit("2001:db8:1:2::2") is None
    for host in ("::3", "::ffff", ":ffff:ffff:ffff:ffff"):
        assert gate.admit("2001:db8:1:2" + host) == CLIENT_FULL
    assert gate.admit("2001:db8:1:3::1") is None  # another /64
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.2") is None  # IPv4 addresses are counted one by one
    gate.release("2001:db8:1:2::2")
    assert gate.held_by("2001:db8:1:2::99") == 1
    assert gate.admit("2001:db8:1:2::99") is None


def test_a_closed_connection_frees_its_place_and_refusals_hold_none() -> None:
    gate = ConnectionGate(ConnectionLimits(total=2, per_client=1))
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") == CLIENT_FULL
    gate.release("10.0.0.1")
    assert (gate.open, gate.held_by("10.0.0.1")) == (0, 0)
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.2") is None
    gate.release("10.0.0.2")
    assert gate.admit("10.0.0.3") is None


class Scheduled:
    """A fake event loop timer list: the test decides when a window closes."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> object:
        self.calls.append((delay, callback))
        return None

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for _, callback in calls:
            callback()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def report(
    audit: list[dict[str, Any]],
) -> tuple[RefusalReport, Clock, Scheduled]:
    clock, scheduled = Clock(), Scheduled()
    return RefusalReport(audit.append, every=10, clock=clock, schedule=scheduled), clock, scheduled


TIMEOUT = Refusal("TLS handshake", "not complete within 5s", 408, "10.0.0.1")


def test_the_first_refusal_is_logged_and_audited_at_once(caplog: pytest.LogCaptureFixture) -> None:
    audit: list[dict[str, Any]] = []
    refusals, _, scheduled = report(audit)
    with caplog.at_level(logging.WARNING):
        refusals(TIMEOUT)
    assert caplog.messages == ["refused TLS handshake from 10.0.0.1: not complete within 5s"]
    [record] = audit
    assert {k: v for k, v in record.items() if k != "time"} == {
        "request_id": None,
        "identity": None,
        "route": "TLS handshake",
        "status": 408,
        "client": "10.0.0.1",
        "reason": "not complete within 5s",
        "count": 1,
    }
    assert scheduled.calls == []


def test_a_flood_is_one_line_per_window_with_its_count(caplog: pytest.LogCaptureFixture) -> None:
    audit: list[dict[str, Any]] = []
    refusals, clock, scheduled = report(audit)
    with caplog.at_level(logging.WARNING):
        for n in range(500):
            clock.now += 0.01
            refusals(Refusal("TLS handshake", "not complete within 5s", 408, f"10.0.{n % 7}.9"))
        assert len(caplog.messages) == 1
        assert len(scheduled.calls) == 1  # one timer for the window, not one per refusal
        scheduled.run()
    assert [r["count"] for r in audit] == [1, 499]
    assert audit[1]["client"] == "10.0.2.9"  # the last one held back
    assert "499 more times within 10s, the last from 10.0.2.9" in caplog.messages[1]


def test_kinds_are_counted_apart() -> None:
    audit: list[dict[str, Any]] = []
    refusals, _, scheduled = report(audit)
    kinds = [
        TIMEOUT,
        Refusal("TLS handshake", "failed: HTTP_REQUEST", 0, "10.0.0.1"),
        Refusal("connection", CLIENT_FULL, 503, "10.0.0.1"),
        Refusal("connection", LISTENER_FULL, 0, "10.0.0.2"),
        Refusal("HTTP request", "malformed_http_request", 400, "10.0.0.3"),
    ]
    for kind in kinds * 3:
        refusals(kind)
    scheduled.run()
    counts = {(r["route"], r["reason"]): 0 for r in audit}
    for record in audit:
        counts[(record["route"], record["reason"])] += record["count"]
    assert counts == {(k.route, k.reason): 3 for k in kinds}


def test_after_a_quiet_window_the_next_refusal_is_logged_at_once() -> None:
    audit: list[dict[str, Any]] = []
    refusals, clock, scheduled = report(audit)
    refusals(TIMEOUT)
    clock.now += 11
    refusals(TIMEOUT)
    assert [r["count"] for r in audit] == [1, 1]
    assert scheduled.calls == []


def test_held_refusals_are_not_lost_at_shutdown() -> None:
    audit: list[dict[str, Any]] = []
    refusals, _, scheduled = report(audit)
    for _ in range(4):
        refusals(TIMEOUT)
    refusals.flush()
    scheduled.run()  # the window's timer finds nothing left to report
    assert [r["count"] for r in audit] == [1, 3]


def test_an_audit_log_that_cannot_be_written_does_not_break_the_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def full_disk(record: dict[str, Any]) -> None:
        raise OSError(28, "No space left on device")

    refusals = RefusalReport(full_disk, schedule=Scheduled())
    refusals(TIMEOUT)
    assert "cannot audit a refused TLS handshake: No space left on device" in caplog.text


def test_a_summary_counts_distinct_clients_and_names_the_busiest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    audit: list[dict[str, Any]] = []
    refusals, _, scheduled = report(audit)
    # 1 reported at once, then 7 addresses held back: 10.0.0.n sends n refusals
    refusals(TIMEOUT)
    for n in range(1, 8):
        for _ in range(n):
            refusals(Refusal("TLS handshake", "not complete within 5s", 408, f"10.0.0.{n}"))
    with caplog.at_level(logging.WARNING):
        scheduled.run()
    first, summary = audit
    assert "clients" not in first
    assert "top_clients" not in first
    assert summary["count"] == 28
    assert summary["clients"] == 7
    assert summary["top_clients"] == [
        {"client": f"10.0.0.{n}", "count": n} for n in range(7, 7 - TOP_CLIENTS, -1)
    ]
    assert "from 7 distinct addresses, most: 10.0.0.7 (7), 10.0.0.6 (6)" in caplog.text


def test_a_summary_of_one_address_names_it_alone() -> None:
    audit: list[dict[str, Any]] = []
    refusals, _, scheduled = report(audit)
    for _ in range(3):
        refusals(TIMEOUT)
    scheduled.run()
    assert (audit[1]["clients"], audit[1]["top_clients"]) == (
        1,
        [{"client": "10.0.0.1", "count": 2}],
    )
