"""Shipping checkpoints off the box: syslog over UDP, an HTTP sink, and sinks that fail
without holding anything up."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from bastion.security.checkpoint_ship import CheckpointShipper, syslog_address

LINE = '{"log":"audit.jsonl","seq":3}'


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("/dev/log", "/dev/log"),
        ("logs.example", ("logs.example", 514)),
        ("logs.example:5514", ("logs.example", 5514)),
        ("10.0.0.5:601", ("10.0.0.5", 601)),
        ("[2001:db8::1]:5514", ("2001:db8::1", 5514)),
        ("2001:db8::1", ("2001:db8::1", 514)),
    ],
)
def test_syslog_addresses(text: str, address: object) -> None:
    assert syslog_address(text) == address


def test_each_checkpoint_reaches_syslog() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        shipper = CheckpointShipper(syslog=f"127.0.0.1:{server.getsockname()[1]}")
        shipper.start()
        shipper.submit(LINE)
        message = server.recv(65536).decode()
        shipper.close()
    assert message.endswith((LINE + "\x00", LINE))
    assert "bastion-audit-checkpoint: " in message


@pytest.fixture
def sink() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/checkpoints", received
    finally:
        server.shutdown()
        server.server_close()


def test_each_checkpoint_is_posted_to_the_url(sink: tuple[str, list[bytes]]) -> None:
    url, received = sink
    shipper = CheckpointShipper(url=url)
    shipper.start()
    shipper.submit(LINE)
    shipper.submit(LINE.replace("3", "4"))
    shipper.close()  # drains the queue
    assert received == [LINE.encode(), LINE.replace("3", "4").encode()]


def test_a_dead_sink_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    shipper = CheckpointShipper(url=f"http://127.0.0.1:{port}/?token=secret-token")
    shipper.start()
    shipper.submit(LINE)
    shipper.close()
    assert "not delivered" in caplog.text
    assert "secret-token" not in caplog.text


def test_a_full_queue_drops_instead_of_blocking(caplog: pytest.LogCaptureFixture) -> None:
    shipper = CheckpointShipper(url="http://127.0.0.1:9/")
    shipper._thread = threading.Thread(target=lambda: None)  # started, never consuming
    for _ in range(300):
        shipper.submit(LINE)
    assert "queue is full" in caplog.text


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/", "gopher://x/"])
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        CheckpointShipper(url=url)


def test_without_sinks_nothing_starts() -> None:
    shipper = CheckpointShipper()
    shipper.start()
    shipper.submit(LINE)
    shipper.close()
    assert not shipper.enabled
