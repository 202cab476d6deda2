"""Run the app under uvicorn on pre-bound sockets, with a graceful SIGTERM drain, connection
caps per listener and per client address, and the open-file limit raised to what they need."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
import ssl
from collections.abc import Callable, Generator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.lifespan.off import LifespanOff

from bastion.api.app import create_app
from bastion.api.connections import ConnectionGate, ConnectionLimits, RefusalReport
from bastion.api.middleware.auth import auth_disabled, is_loopback
from bastion.api.protocol import Guards, HeadLimits, TlsListener, protocol_class
from bastion.errors import ConfigError
from bastion.router.registry import StateListener
from bastion.security.tls import certificate_sans, server_context, uncovered
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
        hint = (
            " (another process listens there: stop it or choose another port)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror}{hint}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


LOOPBACK_CAPABLE = frozenset({"127.0.0.1", "::1", "[::1]", "0.0.0.0", "::", "[::]", "localhost"})


def bind_all(hosts: list[str], port: int, *, require_loopback: bool = True) -> list[socket.socket]:
    """Bind every host. A non-loopback address that fails (an interface not up yet) is logged
    and skipped; without at least one loopback-capable bind the server does not start
    (``require_loopback=False`` when another listener of this server already has one)."""
    if auth_disabled() and any(not _loopback_host(h) for h in hosts):
        raise ConfigError(
            "refusing to listen beyond loopback while authentication is "
            "disabled (BASTION_DISABLE_AUTH=1)"
        )
    sockets: list[socket.socket] = []
    failed: list[str] = []
    for host in hosts:
        try:
            sockets.append(bind("127.0.0.1" if host == "localhost" else host, port))
        except ConfigError as exc:
            if host in LOOPBACK_CAPABLE:
                failed.append(exc.message)
            else:
                log.warning("%s; skipping it (it may come up later)", exc.message)
    if require_loopback and not any(h in LOOPBACK_CAPABLE for h in _bound_hosts(sockets)):
        for sock in sockets:
            sock.close()
        if failed:  # name what the operator asked for and why it failed, nothing else
            raise ConfigError("; ".join(failed) + "; not starting")
        raise ConfigError(
            "no loopback-capable address among the hosts to bind (add 127.0.0.1, ::1, 0.0.0.0 "
            "or ::); not starting"
        )
    for message in failed:
        log.error("%s", message)
    return sockets


def _bound_hosts(sockets: list[socket.socket]) -> list[str]:
    return [str(sock.getsockname()[0]) for sock in sockets]


def _loopback_host(host: str) -> bool:
    return host == "localhost" or is_loopback(host.strip("[]"))


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


OPEN_MAX = 10240
"""macOS reports an unlimited hard RLIMIT_NOFILE but refuses a soft limit above this."""

RESERVED_FILES = 256
"""Descriptors kept out of the connection caps: model files, engine pipes, logs, audit."""


def open_file_target(soft: int, hard: int) -> int:
    """The soft RLIMIT_NOFILE to ask for: the hard limit (``OPEN_MAX`` when that is
    unlimited), never lower than the soft limit already in force."""
    if soft == resource.RLIM_INFINITY:
        return soft
    return max(soft, OPEN_MAX if hard == resource.RLIM_INFINITY else hard)


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit as far as the hard one allows; returns the limit now
    in force. A flood of connections should meet the caps, not the process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = open_file_target(soft, hard)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
            target = soft
    log.info("open-file limit %s (hard limit %s)", _shown(target), _shown(hard))
    return target


def _shown(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def connection_limits(
    total: int, per_client: int, open_files: int, listeners: int
) -> ConnectionLimits:
    """Each listener's caps: as configured, but together leaving ``RESERVED_FILES``
    descriptors of ``open_files`` free, so that no listener can starve the others."""
    if open_files != resource.RLIM_INFINITY:
        total = max(1, min(total, (open_files - RESERVED_FILES) // listeners))
    return ConnectionLimits(total, min(per_client, total))


def serve(settings: Settings, home: Path, report: StateListener | None = None) -> None:
    """Serve until SIGTERM/SIGINT; running requests get ``server.drain_timeout`` to finish.
    ``report`` hears every model state change (the watchdog names them if the process dies)."""
    server_settings, tls = settings.server, settings.tls
    if not tls.plain_http and tls.port is None:
        raise ConfigError("--no-plain (tls.plain_http: false) needs --tls-port (tls.port)")
    plain = tls.plain_http or tls.port is None
    sockets = bind_all(server_settings.host, server_settings.port) if plain else []
    app = create_app(settings, home, on_state=report)
    # Refusals below the app share one report: one line per kind per window, all listeners.
    refusals = RefusalReport(app.state.audit.append)
    guards = _guards(settings, refusals)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=protocol_class(guards()),
        # No WebSockets: an upgraded connection would leave the protocol that counts it.
        ws="none",
        timeout_graceful_shutdown=int(server_settings.drain_timeout),
        timeout_keep_alive=5,
        server_header=False,
    )
    secure = _tls_server(settings, home, app, guards()) if tls.port is not None else None
    tls_sockets: list[socket.socket] = []
    if secure is not None:
        tls_hosts = tls.host or server_settings.host
        tls_sockets = bind_all(tls_hosts, tls.port or 0, require_loopback=not plain)
        _warn_uncovered(secure.names, [*tls_hosts, *server_settings.trusted_hosts])
    _log_listeners(sockets, tls_sockets, mutual=tls.client_ca is not None)
    # uvicorn re-raises the stop signal once it has shut down; after a clean drain the
    # process should exit 0 rather than die of SIGTERM.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    try:
        # uvloop and httptools when installed (they are dependencies): less CPU per token
        # on the event loop, which shares the cores with llama.cpp's threads.
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(_serve_all(_Main(config, refusals, secure), sockets, tls_sockets))
    finally:
        refusals.flush()
        for sock in [*sockets, *tls_sockets]:
            sock.close()


def _guards(settings: Settings, refusals: RefusalReport) -> Callable[[], Guards]:
    """Raises the open-file limit, then builds each listener's guards (its own gate)."""
    server = settings.server
    tls = settings.tls
    listeners = (1 if tls.plain_http or tls.port is None else 0) + (tls.port is not None)
    limits = connection_limits(
        server.max_connections,
        server.max_connections_per_client,
        raise_open_file_limit(),
        listeners,
    )
    if limits.total < server.max_connections:
        log.warning(
            "server.max_connections lowered from %d to %d per listener to fit the open-file "
            "limit; raise the hard limit (ulimit -Hn, LimitNOFILE=) to allow more",
            server.max_connections,
            limits.total,
        )
    head = HeadLimits(server.max_header_bytes, server.header_timeout)

    def build() -> Guards:
        return Guards(head, ConnectionGate(limits), refusals, server.tls_handshake_timeout)

    return build


class _Secondary(uvicorn.Server):
    """The HTTPS listener: the main server owns the signals and the app's lifespan. It
    accepts connections itself (``TlsListener``), so that each is counted and timed from
    the moment it is accepted, before any TLS."""

    def __init__(
        self,
        config: uvicorn.Config,
        context: ssl.SSLContext,
        names: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(config)
        self.context = context
        self.names = names
        """The server certificate's subject alternative names."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        loop = asyncio.get_running_loop()

        def http() -> Any:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state={}, _loop=loop
            )

        # Stand-ins for asyncio servers: uvicorn calls close() and wait_closed() on them.
        listeners = [TlsListener(sock, http, self.context, loop) for sock in sockets or []]
        self.servers = listeners  # type: ignore[assignment]
        self.started = True


def _tls_server(settings: Settings, home: Path, app: Any, guards: Guards) -> _Secondary:
    tls = settings.tls
    certfile = tls.certfile or home / "tls" / "server.crt"
    keyfile = tls.keyfile or home / "tls" / "server.key"
    if not certfile.is_file() or not keyfile.is_file():
        raise ConfigError(
            f"HTTPS needs {certfile} and {keyfile}: run `bastion certs init` and "
            "`bastion certs issue --server NAME`"
        )
    # Built here so a bad certificate or revocation list stops the start with its reason.
    context = server_context(certfile, keyfile, client_ca=tls.client_ca, home=home)
    names = frozenset(certificate_sans(certfile))
    # No TLS options for uvicorn: _Secondary accepts and runs the handshakes itself.
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=protocol_class(
            guards,
            tls_identity=True,
            server_names=names,
            client_cert_required=tls.client_ca is not None,
        ),
        ws="none",
        timeout_graceful_shutdown=int(settings.server.drain_timeout),
        server_header=False,
    )
    return _Secondary(config, context, names)


def _warn_uncovered(sans: frozenset[str], names: list[str]) -> None:
    """Clients checking the certificate against an address or name it does not list fail
    with a hostname mismatch; name those once, at start."""
    missing = uncovered(names, sorted(sans))
    if missing:
        log.warning(
            "the server certificate does not cover %s (it lists %s): clients using those "
            "names fail the certificate check; reissue it with `bastion certs issue --server "
            "NAME --san ... --force`",
            ", ".join(missing),
            ", ".join(sorted(sans)) or "no names",
        )


def _url(scheme: str, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def _log_listeners(
    sockets: list[socket.socket], tls_sockets: list[socket.socket], *, mutual: bool
) -> None:
    for sock in sockets:
        log.info("bastion listening on %s/v1", _url("http", sock))
    for sock in tls_sockets:
        log.info("bastion listening on %s/v1", _url("https", sock))
    if not tls_sockets:
        return
    plain = [_url("http", s) for s in sockets]
    https = ", ".join(_url("https", s) for s in tls_sockets)
    kind = "HTTPS with client certificates" if mutual else "HTTPS"
    if not plain:
        log.info("listeners: %s on %s; plain HTTP off (--no-plain)", kind, https)
    elif all(_loopback_host(str(s.getsockname()[0])) for s in sockets):
        log.info("listeners: %s on %s; plain HTTP on loopback: %s", kind, https, ", ".join(plain))
    else:
        log.warning(
            "listeners: %s on %s; plain HTTP, without TLS, is also open on %s: pass "
            "--no-plain, or bind it to loopback (server.host 127.0.0.1 with tls.host 0.0.0.0)",
            kind,
            https,
            ", ".join(plain),
        )


class _Main(uvicorn.Server):
    """The plain listener. It owns the signals and the app's lifespan, so it also stops the
    HTTPS listener, and ends the lifespan only once both listeners have drained and the
    refusals held back are reported: the lifespan's "shutdown" checkpoint signs the audit
    log's final length, so nothing may be audited after it."""

    def __init__(
        self, config: uvicorn.Config, refusals: RefusalReport, secure: _Secondary | None
    ) -> None:
        super().__init__(config)
        self.refusals = refusals
        self.secure = secure
        self.secondary: asyncio.Task[None] | None = None
        self.tls_sockets: list[socket.socket] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # HTTPS starts once the lifespan has: before, a request would meet an app without
        # its registry (500), and a failed start would have served some.
        await super().startup(sockets)
        if not self.should_exit:
            self.start_secure(self.tls_sockets)

    def start_secure(self, sockets: list[socket.socket]) -> None:
        if self.secure is not None:
            self.secondary = asyncio.create_task(self.secure.serve(sockets=sockets))

    async def stop_secure(self) -> None:
        if self.secure is not None and self.secondary is not None:
            self.secure.should_exit = True
            await self.secondary

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.secure is not None:
            self.secure.should_exit = True  # both listeners drain at the same time
        # uvicorn ends the lifespan at the end of its shutdown; it must wait for the HTTPS
        # listener, so it is held back here and ended below.
        lifespan, self.lifespan = self.lifespan, LifespanOff(self.config)
        try:
            await super().shutdown(sockets)
            await self.stop_secure()
        finally:
            self.lifespan = lifespan
            self.refusals.flush()
            if not self.force_exit:
                await lifespan.shutdown()


async def _serve_all(
    main: _Main, sockets: list[socket.socket], tls_sockets: list[socket.socket]
) -> None:
    main.tls_sockets = tls_sockets
    try:
        await main.serve(sockets=sockets)
    finally:
        await main.stop_secure()  # when the main server failed before its shutdown
