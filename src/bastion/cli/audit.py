"""``bastion audit verify``: the hash chain and the signed checkpoints; exit 1 naming what is
wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bastion.cli.help import PlainCommand, new_app
from bastion.integrity.signing import PublicKey, SignatureError
from bastion.integrity.trust import keys_dir
from bastion.security.audit_verify import ChainProblem, read_checkpoints, verify_home
from bastion.security.checkpoints import Checkpoint
from bastion.settings import home_dir

app = new_app("Check the audit log.")


def _keys(paths: list[Path], home: Path) -> list[PublicKey]:
    """The given public keys, or this server's own (keys/signing.pub)."""
    files = paths or [keys_dir(home) / "signing.pub"]
    keys = []
    for path in files:
        try:
            keys.append(PublicKey.parse(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            if paths:
                typer.echo(f"bastion: {path}: no such file", err=True)
                raise typer.Exit(2) from None
        except (SignatureError, UnicodeDecodeError):
            typer.echo(f"bastion: {path}: not a minisign public key", err=True)
            raise typer.Exit(2) from None
    return keys


@app.command(cls=PlainCommand)
def verify(
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            help="Checkpoints obtained elsewhere (syslog, a remote sink): a file of checkpoint "
            "lines, syslog prefixes allowed. Repeatable."
        ),
    ] = None,
    key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Public key the checkpoints must be signed with, from a copy you trust "
            "(default: this server's keys/signing.pub). Repeatable, e.g. across a key change."
        ),
    ] = None,
) -> None:
    """Check the audit logs and their rotated files against the hash chain and the signed
    checkpoints: lines deleted at the start, a dropped tail, a line edited and the chain
    recomputed, or forged checkpoints exit 1."""
    home = home_dir()
    keys = _keys(key or [], home)
    problems: list[ChainProblem] = []
    external: list[Checkpoint] = []
    for path in checkpoint or []:
        if not path.is_file():
            typer.echo(f"bastion: {path}: no such file", err=True)
            raise typer.Exit(2)
        valid, rejected = read_checkpoints(path, keys)
        external += valid
        problems += rejected
        if not valid and not rejected:
            typer.echo(f"bastion: {path}: holds no checkpoint", err=True)
            raise typer.Exit(2)
    reports = verify_home(home / "audit", keys, external)
    if not keys:
        typer.echo(
            f"no public key: {keys_dir(home) / 'signing.pub'} is missing, so no checkpoint "
            "can be checked; pass --key",
            err=True,
        )
    for report in reports:
        problems += report.problems
        covered = f"; checkpoints cover records up to {report.anchored}" if report.anchored else ""
        typer.echo(f"{report.log}: {report.records} records, last {report.last}{covered}")
        for note in report.notes:
            typer.echo(f"  NOTE {note}")
    if not reports:
        typer.echo("no audit records")
    if keys:
        typer.echo(f"checkpoint key: {', '.join(k.id_text for k in keys)}")
    if problems:
        for problem in problems:
            typer.echo(f"BROKEN {problem}", err=True)
        raise typer.Exit(1)
    unanchored = sum(r.last - r.anchored for r in reports if r.last > r.anchored)
    if unanchored:
        typer.echo(f"audit chain intact; {unanchored} records not yet anchored by a checkpoint")
    else:
        typer.echo("audit log intact")


@app.callback()
def _group() -> None:
    """Check the audit log."""
