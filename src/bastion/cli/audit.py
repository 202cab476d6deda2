"""``bastion audit verify``: walk the hash chain; exit 1 naming the first broken line."""

from __future__ import annotations

import typer

from bastion.security.audit import verify_chain
from bastion.settings import home_dir

app = typer.Typer(help="Check the audit log.", no_args_is_help=True)


@app.command()
def verify() -> None:
    """Check every line of the audit log and its rotated files against the hash chain."""
    problems = verify_chain(home_dir() / "audit")
    if problems:
        for problem in problems:
            typer.echo(f"BROKEN {problem}", err=True)
        raise typer.Exit(1)
    typer.echo("audit log intact")


@app.callback()
def _group() -> None:
    """Check the audit log."""
