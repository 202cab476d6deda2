"""``bastion keys``: API keys for callers beyond loopback. Only hashes are stored."""

from __future__ import annotations

from typing import Annotated

import typer

from bastion.cli.help import PlainCommand, new_app
from bastion.security.api_keys import INFERENCE, SCOPES, KeyStore, KeyStoreError, parse_scopes
from bastion.settings import ensure_dir, home_dir

app = new_app("Create, list and revoke API keys.")


def _store() -> KeyStore:
    return KeyStore(ensure_dir(home_dir()))


@app.command(cls=PlainCommand)
def create(
    name: str,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help=f"Scope of the key: {', '.join(SCOPES)} (repeat, or a comma list). "
            "inference: the OpenAI routes; admin: /api/* and /metrics. Default inference.",
        ),
    ] = None,
) -> None:
    """Create a key and print it once; only its SHA-256 is kept."""
    try:
        scopes = parse_scopes(scope or [INFERENCE])
        token = _store().create(name, scopes)
    except KeyStoreError as exc:
        typer.echo(f"bastion: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(token)
    typer.echo(
        f"key '{name}' ({','.join(sorted(scopes))}) created; it is shown only now. "
        "Send it as 'Authorization: Bearer <key>'.",
        err=True,
    )


@app.command("list", cls=PlainCommand)
def list_keys() -> None:
    """Key names, creation times, scopes and whether they are revoked (never the keys)."""
    for key in _store().all():
        scopes = ",".join(sorted(key.scopes)) or "none"
        status = "revoked" if key.revoked else "active"
        typer.echo(f"{key.name:<24} {key.created}  {status:<8} {scopes}")


@app.command(cls=PlainCommand)
def revoke(name: str) -> None:
    """Revoke a key; it stops working at once, also on a running server."""
    try:
        _store().revoke(name)
    except KeyStoreError as exc:
        typer.echo(f"bastion: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"revoked '{name}'")
