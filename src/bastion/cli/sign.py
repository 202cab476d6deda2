"""``bastion sign``: keys and minisign-compatible signatures over model manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from bastion.cli.help import PlainCommand, new_app
from bastion.integrity.signing import PublicKey, SignatureError
from bastion.integrity.trust import (
    IntegrityError,
    check_directory,
    generate_key,
    keys_dir,
    local_key,
    sign_directory,
    trust,
    trusted_keys,
)
from bastion.settings import ensure_dir, home_dir

app = new_app("Sign model manifests and verify them.")


@app.command(cls=PlainCommand)
def keygen(
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing key (signatures made with the old one stop verifying "
            "unless its public key stays trusted).",
        ),
    ] = False,
) -> None:
    """Create this server's signing key (0600) and trust its public key. The first `bastion
    serve` creates one too: then this shows that key and exits 0."""
    home = ensure_dir(home_dir())
    private, public = keys_dir(home) / "signing.key", keys_dir(home) / "signing.pub"
    if private.exists() and not force:
        # The state the operator asked for already holds: say which key, exit 0.
        try:
            existing = local_key(home)
        except (OSError, SignatureError):
            typer.echo(
                f"bastion: {private} exists but is not a readable minisign secret key; "
                "pass --force to replace it",
                err=True,
            )
            raise typer.Exit(2) from None
        typer.echo(
            f"this server already has a signing key: key ID {existing.public.id_text}, "
            f"{private} (private, 0600), {public} (minisign public key); "
            "--force replaces it"
        )
        return
    try:
        key = generate_key(home, force=force)
    except IntegrityError as exc:
        typer.echo(f"bastion: {exc.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"key ID {key.public.id_text}: {private} (private, 0600), {public} (minisign public key)"
    )


@app.command("sign", cls=PlainCommand)
def sign_command(directory: Path) -> None:
    """Sign DIR/CHECKSUMS.sha256 with this server's key (DIR/CHECKSUMS.sha256.minisig)."""
    home = ensure_dir(home_dir())
    try:
        path = sign_directory(directory, local_key(home))
    except FileNotFoundError:
        typer.echo(f"bastion: {directory} has no CHECKSUMS.sha256 to sign", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"signed: {path}")


@app.command("verify", cls=PlainCommand)
def verify_command(directory: Path) -> None:
    """Check DIR's signature against the trusted keys, then every file. Exit 1 on failure."""
    home = ensure_dir(home_dir())
    total = (
        sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        if (directory.is_dir())
        else 0
    )
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("hashing", total=total)
            provenance = check_directory(
                directory,
                trusted_keys(home),
                require_signature=True,
                progress=lambda done: bar.advance(task, done),
            )
    except IntegrityError as exc:
        typer.echo(f"FAILED: {exc.message}", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"OK: {len(provenance.manifest.entries)} files, manifest "
        f"sha256:{provenance.root_digest}, signed by {provenance.signer}"
    )


@app.command("trust", cls=PlainCommand)
def trust_command(public_key: Path) -> None:
    """Trust a signer's minisign public key (copied to $BASTION_HOME/keys/trusted/)."""
    home = ensure_dir(home_dir())
    try:
        key = PublicKey.parse(public_key.read_text(encoding="utf-8"))
    except (OSError, SignatureError) as exc:
        typer.echo(f"bastion: {public_key}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"trusted key {key.id_text}: {trust(home, key)}")
