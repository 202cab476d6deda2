"""``bastion serve``: import and verify the model, then serve the OpenAI API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bastion.api.watchdog import attach
from bastion.catalog import load_catalog
from bastion.log import configure_logging
from bastion.settings import ensure_dir, home_dir, load_settings
from bastion.store.pull import apply_offline


def serve_command(
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Address to bind (repeatable). Default 127.0.0.1."),
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port. Default 8000.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to serve. Default smollm2-135m-instruct.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="llama.cpp threads (0 = all cores).")] = None,
    slots: Annotated[int | None, typer.Option(help="Sequences decoded together.")] = None,
    ctx_per_slot: Annotated[int | None, typer.Option(help="Context tokens per slot.")] = None,
    tls_port: Annotated[
        int | None,
        typer.Option(help="Also serve HTTPS on this port (certificate from `bastion certs`)."),
    ] = None,
    tls_host: Annotated[
        list[str] | None,
        typer.Option(
            "--tls-host", help="Address for HTTPS to bind (repeatable). Default: as --host."
        ),
    ] = None,
    no_plain: Annotated[
        bool,
        typer.Option(
            "--no-plain", help="With --tls-port: serve HTTPS only, no plain HTTP listener."
        ),
    ] = False,
    watchdog_fd: Annotated[
        int | None,
        typer.Option(hidden=True, help="Set by the `bastion` launcher: its report socket."),
    ] = None,
) -> None:
    """Serve the model on http://HOST:PORT/v1 until SIGTERM (running requests drain first)."""
    report = attach(watchdog_fd)
    server: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    if host:
        server["host"] = host
    if port is not None:
        server["port"] = port
    if model is not None:
        server["default_model"] = model
    for key, value in (("threads", threads), ("slots", slots), ("ctx_per_slot", ctx_per_slot)):
        if value is not None:
            engine[key] = value
    tls: dict[str, Any] = {"port": tls_port} if tls_port is not None else {}
    if tls_host:
        tls["host"] = tls_host
    if no_plain:
        tls["plain_http"] = False
    overrides = {k: v for k, v in (("server", server), ("engine", engine), ("tls", tls)) if v}
    settings = load_settings(overrides)
    configure_logging(settings.server.log_level)
    home = ensure_dir(home_dir())
    apply_offline(settings.store)
    # Unknown or invalid models fail here, before anything binds.
    load_catalog(home, settings.store.allowed_roots).get(settings.server.default_model)
    from bastion.api.server import serve  # noqa: PLC0415 - loads the engine: only to serve

    serve(settings, home, report=report)
    raise typer.Exit(0)
