"""Limits on what a client may send and how slowly, over raw sockets: heads larger than
``server.max_header_bytes`` get 431, heads or bodies that trickle in get 408, idle connections
are closed, and the server stays healthy for everyone else."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, start_server

pytestmark = pytest.mark.e2e
LIMIT = 4096


@pytest.fixture(scope="module")
def strict(shared_home: Path) -> Iterator[Server]:
    server = start_server(
        shared_home,
        env={
            "BASTION_SERVER__MAX_HEADER_BYTES": str(LIMIT),
            "BASTION_SERVER__HEADER_TIMEOUT": "1",
            "BASTION_SERVER__BODY_TIMEOUT": "1",
        },
    )
    try:
        yield server
    finally:
        server.stop()


def connect(server: Server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names) and body (by Content-Length).
    Unbuffered, so nothing of a following response is read ahead and lost."""
    reader = sock.makefile("rb", buffering=0)
    status = int(reader.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline().rstrip(b"\r\n")) != b"":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    length, body = int(headers.get("content-length", "0")), b""
    while len(body) < length and (part := reader.read(length - len(body))):
        body += part
    return status, headers, body


def assert_closed(sock: socket.socket) -> None:
    """The server hung up: reading gives end of file (or a reset) instead of blocking."""
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


def error_code(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return str(error["code"])


def head(*headers: bytes, path: bytes = b"/health") -> bytes:
    return b"\r\n".join([b"GET " + path + b" HTTP/1.1", b"Host: 127.0.0.1", *headers, b"", b""])


def post(path: bytes, body: bytes, *headers: bytes, length: int | None = None) -> bytes:
    """A POST with a JSON body; ``length`` claims a Content-Length other than the body's."""
    declared = len(body) if length is None else length
    return b"\r\n".join(
        [
            b"POST " + path + b" HTTP/1.1",
            b"Host: 127.0.0.1",
            b"Content-Type: application/json",
            b"Content-Length: %d" % declared,
            *headers,
            b"",
            body,
        ]
    )


def still_healthy(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_a_head_under_the_limit_is_served(strict: Server) -> None:
    with connect(strict) as sock:
        sock.sendall(head(b"X-Padding: " + b"p" * (LIMIT // 2)))
        status, _, _ = read_response(sock)
    assert status == 200


@pytest.mark.parametrize(
    "headers",
    [
        [b"X-Big: " + b"b" * (LIMIT + 1)],
        [b"X-Many-%d: %s" % (i, b"m" * 100) for i in range(60)],
    ],
    ids=["one-long-header", "many-headers"],
)
def test_a_head_over_the_limit_is_431(strict: Server, headers: list[bytes]) -> None:
    with connect(strict) as sock:
        sock.sendall(head(*headers))
        status, response_headers, body = read_response(sock)
        assert status == 431
        assert response_headers["connection"] == "close"
        assert error_code(body) == "request_header_fields_too_large"
        assert_closed(sock)
    still_healthy(strict)


def test_an_endless_header_line_is_cut_off_before_it_ends(strict: Server) -> None:
    with connect(strict) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        for _ in range(4):
            sock.sendall(b"e" * (LIMIT // 2))  # never terminated: refused while it grows
        status, _, body = read_response(sock)
    assert status == 431
    assert error_code(body) == "request_header_fields_too_large"


def test_a_trickled_head_gets_408(strict: Server) -> None:
    with connect(strict) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        status = 0
        for byte in b"X-Slow: " + b"s" * 40:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # the server already answered and hung up
            time.sleep(0.1)
        status, _, body = read_response(sock)
        assert status == 408
        assert error_code(body) == "request_timeout"
        assert_closed(sock)
    assert "request_timeout" in strict.log_text()
    still_healthy(strict)


def test_a_connection_that_sends_nothing_is_closed(strict: Server) -> None:
    with connect(strict) as sock:
        assert_closed(sock)  # within the head timeout, without a response


def test_keep_alive_resets_the_head_limits(strict: Server) -> None:
    """Each request on a kept-alive connection gets its own size budget and time."""
    with connect(strict) as sock:
        for _ in range(3):
            sock.sendall(head(b"X-Padding: " + b"p" * (LIMIT // 2)))
            assert read_response(sock)[0] == 200
            time.sleep(0.6)  # together longer than the head timeout, each under it


def test_a_large_body_is_not_counted_as_head(strict: Server) -> None:
    body = json.dumps({"messages": "not a list", "padding": "x" * (8 * LIMIT)}).encode()
    request = post(b"/v1/chat/completions", body)
    with connect(strict) as sock:
        sock.sendall(head() + request)  # pipelined behind a GET
        assert read_response(sock)[0] == 200
        status, _, response = read_response(sock)
    assert status == 400
    assert error_code(response) != "request_header_fields_too_large"


def completion(max_tokens: int) -> bytes:
    body = {"prompt": "Count: 1, 2, 3,", "max_tokens": max_tokens, "temperature": 0}
    return post(b"/v1/completions", json.dumps(body).encode())


def test_an_oversized_pipelined_head_is_refused_after_the_answer_before_it(
    strict: Server,
) -> None:
    with connect(strict) as sock:
        sock.sendall(completion(24) + b"GET /health HTTP/1.1\r\nX-Endless: ")
        time.sleep(0.05)
        sock.sendall(b"e" * (2 * LIMIT))  # arrives while the answer is being written
        status, _, answer = read_response(sock)
        assert status == 200
        assert json.loads(answer)["usage"]["completion_tokens"] == 24  # not cut short
        status, _, body = read_response(sock)  # then the refusal, not spliced into it
        assert status == 431
        assert error_code(body) == "request_header_fields_too_large"
        assert_closed(sock)


def test_the_head_clock_stops_while_the_server_is_answering(strict: Server) -> None:
    """A head pipelined behind a long answer is not timed while the server writes that
    answer (the server is not reading then); once the answers are done, it is."""
    partial = b"GET /health HTTP/1.1\r\nX-Partial: 1\r\n"
    with connect(strict) as sock:
        sock.sendall(completion(200) + head() + partial)
        status, _, answer = read_response(sock)
        assert status == 200
        assert json.loads(answer)["usage"]["completion_tokens"] == 200  # longer than the timeout
        assert read_response(sock)[0] == 200
        status, _, body = read_response(sock)
        assert status == 408
        assert error_code(body) == "request_timeout"


@pytest.mark.parametrize(
    ("request_bytes", "leftover"),
    [(head(), b"\r\n"), (head(b"Transfer-Encoding: chunked"), b"1\r\nx\r\n")],
    ids=["blank-line", "unread-body"],
)
def test_bytes_after_an_answer_do_not_hold_the_connection(
    strict: Server, request_bytes: bytes, leftover: bytes
) -> None:
    """A blank line before the next request line, or a chunk of a GET's body that nobody
    reads, must not keep a connection open past the head timeout."""
    with connect(strict) as sock:
        sock.sendall(request_bytes)
        assert read_response(sock)[0] == 200
        sock.sendall(leftover)
        rest = sock.makefile("rb", buffering=0).read()  # returns once the server hangs up
        assert rest == b"" or rest.startswith(b"HTTP/1.1 408")


def test_a_trickled_body_gets_408(strict: Server) -> None:
    with connect(strict) as sock:
        partial = b'{"messages": ['  # and then nothing more
        sock.sendall(post(b"/v1/chat/completions", partial, b"X-Request-Id: slow-body", length=100))
        status, headers, body = read_response(sock)
    assert status == 408
    assert headers["x-request-id"] == "client-slow-body"
    assert error_code(body) == "request_timeout"
    still_healthy(strict)


def chunked(body: bytes) -> bytes:
    """A chat request whose chunked body is ``body`` as sent, framing included."""
    return b"\r\n".join(
        [
            b"POST /v1/chat/completions HTTP/1.1",
            b"Host: 127.0.0.1",
            b"Content-Type: application/json",
            b"Transfer-Encoding: chunked",
            b"",
            body,
        ]
    )


MALFORMED = {
    "text-after-version": head(path=b"/health HTTP/1.1 extra"),
    "unknown-version": head(path=b"/health HTTP/9.9"),
    "space-in-target": head(path=b"/he alth"),
    "control-char-in-target": head(path=b"/he\x01alth"),
    "invalid-method": b"G(T /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "control-char-in-header-name": head(b"X-Bad\x01Name: v"),
    "nul-in-header-value": head(b"X-Bad: v\x00v"),
    "space-in-header-name": head(b"Bad Name: v"),
    "header-without-colon": head(b"NoColon"),
    "non-numeric-content-length": head(b"Content-Length: abc"),
    "two-content-lengths": head(b"Content-Length: 1", b"Content-Length: 2"),
    "chunk-size-not-hex": chunked(b"zz\r\n{}\r\n0\r\n\r\n"),
    "chunk-longer-than-its-size": chunked(b"2\r\n{}}}}}\r\n0\r\n\r\n"),
    "chunk-without-crlf": chunked(b"2\r\n{}XX0\r\n\r\n"),
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_what_the_http_parser_refuses_is_400_in_the_envelope(
    strict: Server, request_bytes: bytes
) -> None:
    with connect(strict) as sock:
        sock.sendall(request_bytes)
        status, headers, body = read_response(sock)
        assert status == 400
        assert headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        assert error_code(body) == "malformed_http_request"
        assert_closed(sock)
    still_healthy(strict)


def test_a_malformed_request_pipelined_behind_a_good_one_is_refused_after_its_answer(
    strict: Server,
) -> None:
    with connect(strict) as sock:
        sock.sendall(head() + head(b"X-Bad\x01Name: v"))
        assert read_response(sock)[0] == 200
        status, _, body = read_response(sock)
        assert status == 400
        assert error_code(body) == "malformed_http_request"
        assert_closed(sock)
    assert re.search(r"refused HTTP request.*malformed_http_request", strict.log_text())
