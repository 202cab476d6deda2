"""The open-file limit raised at start, connection caps that fit inside it, and a shutdown
that ends the app's lifespan (and its audit checkpoint) only after both listeners."""

from __future__ import annotations

import asyncio
import resource
import socket
import ssl
from typing import Any

import pytest
import uvicorn

from bastion.api.connections import Refusal, RefusalReport
from bastion.api.server import (
    OPEN_MAX,
    RESERVED_FILES,
    _Main,
    _Secondary,
    _serve_all,
    bind_all,
    connection_limits,
    open_file_target,
    raise_open_file_limit,
)
from bastion.errors import ConfigError

INF = resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("soft", "hard", "target"),
    [
        (1024, 1_048_576, 1_048_576),  # a container: soft 1024, hard 2^20
        (1024, 524_288, 524_288),  # systemd's default hard limit
        (256, INF, OPEN_MAX),  # macOS: unlimited hard, OPEN_MAX is what it accepts
        (65_536, INF, 65_536),  # already above OPEN_MAX: never lowered
        (4096, 4096, 4096),  # already at the hard limit
        (INF, INF, INF),
    ],
)
def test_the_soft_limit_is_raised_to_the_hard_one(soft: int, hard: int, target: int) -> None:
    assert open_file_target(soft, hard) == target


def test_raising_the_limit_at_start_reaches_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        now = raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (now, hard)
        assert now == open_file_target(min(soft, 512), hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    ("open_files", "listeners", "total", "per_client"),
    [
        (1_048_576, 2, 1024, 64),  # plenty: as configured
        (1024, 1, 1024 - RESERVED_FILES, 64),  # one listener, a small limit
        (1024, 2, (1024 - RESERVED_FILES) // 2, 64),  # two listeners share it
        (300, 2, 22, 22),  # the per-client cap never exceeds the listener's
        (100, 1, 1, 1),  # absurdly low: still one connection
        (INF, 2, 1024, 64),
    ],
)
def test_connection_caps_fit_the_open_file_limit(
    open_files: int, listeners: int, total: int, per_client: int
) -> None:
    limits = connection_limits(1024, 64, open_files, listeners)
    assert (limits.total, limits.per_client) == (total, per_client)
    if open_files != INF:
        assert limits.total * listeners <= max(listeners, open_files - RESERVED_FILES)


async def _lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app whose lifespan shutdown stands in for bastion's "shutdown" checkpoint."""
    assert scope["type"] == "lifespan"
    events: list[str] = scope["app"].events
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            events.append("checkpoint")
            await send({"type": "lifespan.shutdown.complete"})
            return


class _EventApp:
    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _lifespan_app({**scope, "app": self}, receive, send)


def test_the_https_listener_and_held_refusals_end_before_the_lifespan() -> None:
    app = _EventApp()
    refusals = RefusalReport(lambda record: app.events.append(f"refusal x{record['count']}"))
    config = uvicorn.Config(app, log_config=None, lifespan="on", ws="none")
    secure_config = uvicorn.Config(app, log_config=None, lifespan="off", ws="none")
    secure = _Secondary(secure_config, ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    main = _Main(config, refusals, secure)
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    for sock in sockets:
        sock.setblocking(False)  # as server.bind leaves them

    async def run() -> None:
        async def stop_when_started() -> None:
            while not (main.started and secure.started):  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.01)
            for _ in range(3):  # the first is reported at once, two are held back
                refusals(Refusal("connection", "listener at max_connections", 503, "10.0.0.1"))
            original = secure.shutdown

            async def recorded(sockets: list[socket.socket] | None = None) -> None:
                await original(sockets)
                app.events.append("https stopped")

            secure.shutdown = recorded  # type: ignore[method-assign]
            main.should_exit = True

        stopper = asyncio.create_task(stop_when_started())
        await _serve_all(main, sockets[:1], sockets[1:])
        await stopper

    try:
        asyncio.run(run())
    finally:
        for sock in sockets:
            sock.close()
    assert app.events == ["refusal x1", "https stopped", "refusal x2", "checkpoint"]


def _listening(host: str) -> socket.socket:
    """Another process's listener on a free port of ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.bind((host, 0))
    holder.listen(1)
    return holder


@pytest.mark.parametrize("hosts", [["127.0.0.1"], ["localhost"], ["127.0.0.1", "192.0.2.1"]])
def test_a_port_in_use_names_only_the_addresses_asked_for(hosts: list[str]) -> None:
    holder = _listening("127.0.0.1")
    port = holder.getsockname()[1]
    try:
        with pytest.raises(ConfigError) as caught:
            bind_all(hosts, port)
    finally:
        holder.close()
    message = caught.value.message
    assert message.startswith(f"cannot bind 127.0.0.1:{port}: Address already in use")
    assert "another process listens there" in message
    for unasked in ("::1", "0.0.0.0", "::,", "loopback-capable"):
        assert unasked not in message


def test_hosts_without_any_loopback_address_say_what_to_add() -> None:
    with pytest.raises(ConfigError) as caught:
        bind_all(["192.0.2.1"], 0)  # TEST-NET: on no interface, so the bind fails
    assert "no loopback-capable address among the hosts to bind" in caught.value.message
    assert "add 127.0.0.1" in caught.value.message
