"""``bastion keys``: API keys for callers beyond loopback. Only hashes are stored."""

from __future__ import annotations

import typer

from bastion.security.api_keys import KeyStore, KeyStoreError
from bastion.settings import ensure_dir, home_dir

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _store() -> KeyStore:
    return KeyStore(ensure_dir(home_dir()))


@app.command()
def create(name: str) -> None:
    """Create a key and print it once; only its SHA-256 is kept."""
    try:
        token = _store().create(name)
    except KeyStoreError as exc:
        typer.echo(f"bastion: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(token)
    typer.echo(
        f"key '{name}' created; it is shown only now. Send it as 'Authorization: Bearer <key>'.",
        err=True,
    )


@app.command("list")
def list_keys() -> None:
    """Key names, creation times and whether they are revoked (never the keys)."""
    for key in _store().all():
        typer.echo(f"{key.name:<24} {key.created}  {'revoked' if key.revoked else 'active'}")


@app.command()
def revoke(name: str) -> None:
    """Revoke a key; it stops working at once, also on a running server."""
    try:
        _store().revoke(name)
    except KeyStoreError as exc:
        typer.echo(f"bastion: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"revoked '{name}'")
