"""The guarded HTTP protocol over real sockets, in process: one refusal per connection however
many causes one packet carries, upgrade requests served without log lines, and TLS handshakes
that end in any way give their connection's place back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from bastion.api.connections import ConnectionGate, ConnectionLimits, Refusal, RefusalReport
from bastion.api.protocol import Guards, HeadLimits, TlsListener, protocol_class
from tests.e2e.test_limits import assert_closed, error_code, head, read_response

LIMIT = 16 * 1024


class Recorded(RefusalReport):
    """Every refusal as reported, unsampled."""

    def __init__(self) -> None:
        super().__init__(None)
        self.refusals: list[Refusal] = []

    def __call__(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)


async def ok_app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
    assert scope["type"] == "http"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def guards(report: RefusalReport) -> Guards:
    return Guards(HeadLimits(LIMIT, 30), ConnectionGate(ConnectionLimits(100, 100)), report)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, Recorded]]:
    """A plain listener on a loopback port, served from a thread on uvloop (as in bastion)."""
    report = Recorded()
    config = uvicorn.Config(
        ok_app, log_config=None, lifespan="off", http=protocol_class(guards(report)), ws="none"
    )
    server = uvicorn.Server(config)
    sock = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            threading.Event().wait(0.01)
        yield sock.getsockname()[1], report
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def listener(served: tuple[int, Recorded]) -> tuple[int, Recorded]:
    served[1].refusals.clear()
    return served


def exchange(port: int, sent: bytes) -> list[tuple[int, str | None]]:
    """Every response to ``sent`` (status, error code) until the server hangs up."""
    answers: list[tuple[int, str | None]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(sent)
        while True:
            try:
                status, _, body = read_response(sock)
            except (IndexError, ConnectionResetError):  # end of file: nothing more
                break
            answers.append((status, error_code(body) if status != 200 else None))
            if status != 200:
                assert_closed(sock)
                break
    return answers


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


GARBAGE = b"GARBAGE / HTTP/1.1\r\n"
MALFORMED = "malformed_http_request"
TOO_LARGE = "request_header_fields_too_large"

ONE_PACKET = {
    # a parser error and a head over the limit, in one data_received call
    "garbage-then-20kb": (GARBAGE + b"A" * 20_000, [(400, MALFORMED)]),
    "bad-header-then-oversized-head": (
        head(b"Bad\x01Name: v", b"X-Pad: " + b"p" * 20_000),
        [(400, MALFORMED)],
    ),
    # a complete head too large (parser callback) that is also past the byte count
    "complete-oversized-head": (head(b"X-Big: " + b"b" * 20_000), [(431, TOO_LARGE)]),
    "endless-header-line": (b"GET / HTTP/1.1\r\nX-Endless: " + b"e" * 20_000, [(431, TOO_LARGE)]),
    # the refusal waits for the answer before it, and the bytes behind add no second one
    "pipelined-behind-a-good-request": (
        head() + GARBAGE + b"A" * 20_000,
        [(200, None), (400, MALFORMED)],
    ),
    "oversized-pipelined-behind-a-good-request": (
        head() + head(b"X-Big: " + b"b" * 20_000) + GARBAGE,
        [(200, None), (431, TOO_LARGE)],
    ),
}


@pytest.mark.parametrize(("sent", "answers"), ONE_PACKET.values(), ids=ONE_PACKET.keys())
def test_a_connection_is_refused_once_however_many_causes_arrive_together(
    listener: tuple[int, Recorded],
    caplog: pytest.LogCaptureFixture,
    sent: bytes,
    answers: list[tuple[int, str]],
) -> None:
    port, report = listener
    with caplog.at_level(logging.WARNING):
        assert exchange(port, sent) == answers
        # Served after the refused connection's callbacks have all run: still healthy.
        assert exchange(port, head(b"Connection: close")) == [(200, None)]
    assert [(r.reason, r.status) for r in report.refusals] == [(answers[-1][1], answers[-1][0])]
    assert problems(caplog) == []  # no "write() after write_eof()" traceback, no warning


@pytest.mark.parametrize(
    "upgrade",
    [
        [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13"],
        [b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings", b"HTTP2-Settings: AAMAAABk"],
        [b"Upgrade: unknown/1", b"Connection: upgrade"],
    ],
    ids=["websocket", "h2c", "unknown"],
)
def test_an_upgrade_request_is_served_as_http_without_log_lines(
    listener: tuple[int, Recorded], caplog: pytest.LogCaptureFixture, upgrade: list[bytes]
) -> None:
    port, report = listener
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                sock.sendall(head(*upgrade))
                assert read_response(sock)[0] == 200
        assert exchange(port, head(b"Connection: close")) == [(200, None)]
    assert problems(caplog) == []
    assert report.refusals == []


class HandshakeNeverEnds:
    """The loop, except that a TLS handshake waits until it is cancelled."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.began = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)

    async def connect_accepted_socket(self, *args: Any, **kwargs: Any) -> None:
        self.began.set()
        await asyncio.Event().wait()


class HandshakeBreaks(HandshakeNeverEnds):
    """The loop, except that the TLS layer fails with neither a TLS nor a socket error, with
    a message that would forge a log line."""

    async def connect_accepted_socket(self, *args: Any, **kwargs: Any) -> None:
        self.began.set()
        raise RuntimeError("broken\nCRITICAL forged \x1b[31mline")


async def handshake_ending(
    loop_type: type[HandshakeNeverEnds], stop: bool
) -> tuple[ConnectionGate, Recorded, bytes]:
    loop = asyncio.get_running_loop()
    report = Recorded()
    config = uvicorn.Config(ok_app, log_config=None, lifespan="off", ws="none")
    config.load()
    http = protocol_class(guards(report), tls_identity=True)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    fake = loop_type(loop)
    listener = TlsListener(
        sock,
        lambda: http(config=config, server_state=ServerState(), app_state={}, _loop=loop),  # type: ignore[call-arg]
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        fake,  # type: ignore[arg-type]
    )
    try:
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        await fake.began.wait()
        if stop:
            listener.close()  # the server is stopping
        with contextlib.suppress(ConnectionResetError):
            ended = await asyncio.wait_for(reader.read(), 15)
        if listener.handshakes:
            await asyncio.wait(set(listener.handshakes))
        writer.close()
        return listener.http().guards.gate, report, ended
    finally:
        listener.close()
        sock.close()


def test_a_handshake_that_fails_unexpectedly_closes_and_gives_its_place_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate, report, ended = asyncio.run(handshake_ending(HandshakeBreaks, stop=False))
    assert ended == b""
    assert gate.open == 0
    assert gate.held_by("127.0.0.1") == 0
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("unhandled RuntimeError: broken\\nCRITICAL forged \\x1b[31mline\n")
    assert report.refusals == []


def test_a_handshake_cut_short_by_shutdown_gives_its_place_back() -> None:
    gate, report, ended = asyncio.run(handshake_ending(HandshakeNeverEnds, stop=True))
    assert ended == b""
    assert gate.open == 0
    assert report.refusals == []
