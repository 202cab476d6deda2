"""``bastion certs``: a private CA, the server certificate and client certificates."""

from __future__ import annotations

from typing import Annotated

import typer

from bastion.security.tls import CertificateError, init_ca, issue, list_certs
from bastion.settings import ensure_dir, home_dir

app = typer.Typer(help="Certificates for HTTPS and mutual TLS.", no_args_is_help=True)


@app.command()
def init(force: Annotated[bool, typer.Option(help="Replace an existing CA.")] = False) -> None:
    """Create the CA (EC P-256, 5 years; key 0600)."""
    try:
        issued = init_ca(ensure_dir(home_dir()), force=force)
    except CertificateError as exc:
        typer.echo(f"bastion: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"CA: {issued.cert} (give this to clients), key {issued.key}")


@app.command("issue")
def issue_command(
    cn: str,
    server: Annotated[bool, typer.Option("--server", help="A server certificate.")] = False,
    san: Annotated[list[str] | None, typer.Option(help="Server name or IP (repeatable).")] = None,
) -> None:
    """A client certificate for CN (its identity in the audit log), or --server's."""
    try:
        issued = issue(ensure_dir(home_dir()), cn, server=server, sans=san)
    except CertificateError as exc:
        typer.echo(f"bastion: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"certificate {issued.cert}, key {issued.key}")


@app.command("list")
def list_command() -> None:
    """Every certificate with its CN and expiry."""
    for path, cn, expires in list_certs(home_dir()):
        typer.echo(f"{path:<36} CN={cn:<24} expires {expires}")
