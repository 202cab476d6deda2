"""Entry point: ``bastion <verb>``. Exit codes: 0 ok, 1 a check failed, 2 usage error."""

from __future__ import annotations

import sys

import typer

from bastion import __version__
from bastion.cli import audit, certs, integrity, keys, models, sign
from bastion.cli.serve import serve_command
from bastion.errors import BastionError

app = typer.Typer(
    name="bastion",
    help="A sovereign LLM server: verified local models behind an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve_command)
app.add_typer(models.app, name="models")
app.add_typer(sign.app, name="sign")
app.add_typer(integrity.app, name="integrity")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(certs.app, name="certs")


@app.command("version")
def version() -> None:
    """Print bastion's version."""
    typer.echo(__version__)


def main() -> None:
    try:
        app(prog_name="bastion")  # also when the watchdog runs it as `python -m`
    except BastionError as exc:
        typer.echo(f"bastion: {exc.message}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # how the watchdog starts the real `bastion serve`
    main()
