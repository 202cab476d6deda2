"""``bastion certs``: a private CA, the server certificate, client certificates and their
revocation."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from bastion.cli.help import PlainCommand, new_app
from bastion.errors import InvalidNameError
from bastion.security.tls import CertificateError, init_ca, issue, list_certs, revoke
from bastion.settings import ensure_dir, home_dir, load_settings

app = new_app("Certificates for HTTPS and mutual TLS.")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"bastion: {message}", err=True)
    return typer.Exit(2)


@app.command(cls=PlainCommand)
def init(
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA.")] = False,
) -> None:
    """Create the CA (EC P-256, 5 years; key 0600) and an empty revocation list."""
    try:
        issued = init_ca(ensure_dir(home_dir()), force=force)
    except CertificateError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"CA: {issued.cert} (give this to clients), key {issued.key}")


@app.command("issue", cls=PlainCommand)
def issue_command(
    cn: str,
    server: Annotated[bool, typer.Option("--server", help="A server certificate.")] = False,
    san: Annotated[list[str] | None, typer.Option(help="Server name or IP (repeatable).")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing certificate and key of that name (a replaced client "
            "certificate is revoked).",
        ),
    ] = False,
) -> None:
    """A client certificate for CN (its identity in the audit log and its file name:
    lowercase a-z, 0-9, '.', '_', '-'), or --server's. A server certificate names CN, every
    --san, localhost, 127.0.0.1, ::1, the non-wildcard server.host and tls.host addresses
    and this machine's host name."""
    hosts = _served_names() if server else None
    try:
        issued = issue(
            ensure_dir(home_dir()), cn, server=server, sans=san, hosts=hosts, force=force
        )
    except CertificateError as exc:
        raise _fail(str(exc)) from None
    except InvalidNameError as exc:
        raise _fail(exc.message) from None
    typer.echo(f"certificate {issued.cert}, key {issued.key}")
    if issued.sans:
        typer.echo(f"valid for: {', '.join(issued.sans)}")
    if issued.revoked_replaced:
        typer.echo("the certificate it replaces is revoked (tls/crl.pem)")


def _served_names() -> list[str]:
    """The addresses the configured server binds (wildcards are dropped later) and the
    machine's host name: the names a client on the LAN is likely to use."""
    settings = load_settings()
    hosts = [*settings.server.host, *(settings.tls.host or [])]
    return [*hosts, socket.gethostname()]


@app.command("revoke", cls=PlainCommand)
def revoke_command(cn: str) -> None:
    """Revoke the client certificate of CN: the HTTPS listener refuses it from its next
    handshake on (the CA-signed list is tls/crl.pem)."""
    try:
        added = revoke(home_dir(), cn)
    except CertificateError as exc:
        raise _fail(str(exc)) from None
    except InvalidNameError as exc:
        raise _fail(exc.message) from None
    typer.echo(f"revoked the certificate of '{cn}'" if added else f"'{cn}' was already revoked")


@app.command("list", cls=PlainCommand)
def list_command() -> None:
    """Every certificate with its CN, expiry and whether it is revoked."""
    for cert in list_certs(home_dir()):
        state = "REVOKED" if cert.revoked else ""
        typer.echo(f"{cert.file:<36} CN={cert.cn:<24} expires {cert.expires} {state}".rstrip())
