"""Run the app under uvicorn on pre-bound sockets, with a graceful SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from bastion.api.app import create_app
from bastion.api.middleware.auth import auth_disabled, is_loopback
from bastion.api.protocol import HeadLimits, protocol_class
from bastion.errors import ConfigError
from bastion.router.registry import StateListener
from bastion.settings import Settings

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


LOOPBACK_CAPABLE = frozenset({"127.0.0.1", "::1", "[::1]", "0.0.0.0", "::", "[::]", "localhost"})


def bind_all(hosts: list[str], port: int) -> list[socket.socket]:
    """Bind every host. A non-loopback address that fails (an interface not up yet) is logged
    and skipped; without at least one loopback-capable bind the server does not start."""
    if auth_disabled() and any(not _loopback_host(h) for h in hosts):
        raise ConfigError(
            "refusing to listen beyond loopback while authentication is "
            "disabled (BASTION_DISABLE_AUTH=1)"
        )
    sockets: list[socket.socket] = []
    for host in hosts:
        try:
            sockets.append(bind("127.0.0.1" if host == "localhost" else host, port))
        except ConfigError as exc:
            if host in LOOPBACK_CAPABLE:
                log.error("%s", exc.message)  # noqa: TRY400 - the message says it all
            else:
                log.warning("%s; skipping it (it may come up later)", exc.message)
    if not any(h in LOOPBACK_CAPABLE for h in _bound_hosts(sockets)):
        for sock in sockets:
            sock.close()
        raise ConfigError(
            "no loopback-capable address (127.0.0.1, ::1, 0.0.0.0, ::) could be bound; not starting"
        )
    return sockets


def _bound_hosts(sockets: list[socket.socket]) -> list[str]:
    return [str(sock.getsockname()[0]) for sock in sockets]


def _loopback_host(host: str) -> bool:
    return host == "localhost" or is_loopback(host.strip("[]"))


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(settings: Settings, home: Path, report: StateListener | None = None) -> None:
    """Serve until SIGTERM/SIGINT; running requests get ``server.drain_timeout`` to finish.
    ``report`` hears every model state change (the watchdog names them if the process dies)."""
    server_settings = settings.server
    sockets = bind_all(server_settings.host, server_settings.port)
    config = uvicorn.Config(
        create_app(settings, home, on_state=report),
        log_config=None,
        access_log=False,
        lifespan="on",
        http=protocol_class(_head_limits(settings), tls_identity=False),
        timeout_graceful_shutdown=int(server_settings.drain_timeout),
        timeout_keep_alive=5,
        server_header=False,
    )
    secure = _tls_server(settings, home, config.app) if settings.tls.port is not None else None
    tls_sockets = bind_all(server_settings.host, settings.tls.port or 0) if secure else []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("bastion listening on http://%s:%d/v1", shown, port)
    for sock in tls_sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("bastion listening on https://%s:%d/v1", shown, port)
    # uvicorn re-raises the stop signal once it has shut down; after a clean drain the
    # process should exit 0 rather than die of SIGTERM.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    try:
        # uvloop and httptools when installed (they are dependencies): less CPU per token
        # on the event loop, which shares the cores with llama.cpp's threads.
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(_serve_all(uvicorn.Server(config), sockets, secure, tls_sockets))
    finally:
        for sock in [*sockets, *tls_sockets]:
            sock.close()


def _head_limits(settings: Settings) -> HeadLimits:
    return HeadLimits(settings.server.max_header_bytes, settings.server.header_timeout)


class _Secondary(uvicorn.Server):
    """The HTTPS listener: the main server owns the signals and the app's lifespan."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _tls_server(settings: Settings, home: Path, app: Any) -> _Secondary:
    tls = settings.tls
    certfile = tls.certfile or home / "tls" / "server.crt"
    keyfile = tls.keyfile or home / "tls" / "server.key"
    if not certfile.is_file() or not keyfile.is_file():
        raise ConfigError(
            f"HTTPS needs {certfile} and {keyfile}: run `bastion certs init` and "
            "`bastion certs issue --server NAME`"
        )
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=protocol_class(_head_limits(settings), tls_identity=True),
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        ssl_ca_certs=str(tls.client_ca) if tls.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE,
        timeout_graceful_shutdown=int(settings.server.drain_timeout),
        server_header=False,
    )
    return _Secondary(config)


async def _serve_all(
    main: uvicorn.Server,
    sockets: list[socket.socket],
    secure: _Secondary | None,
    tls_sockets: list[socket.socket],
) -> None:
    if secure is None:
        await main.serve(sockets=sockets)
        return
    secondary = asyncio.create_task(secure.serve(sockets=tls_sockets))
    try:
        await main.serve(sockets=sockets)
    finally:
        secure.should_exit = True
        await secondary
