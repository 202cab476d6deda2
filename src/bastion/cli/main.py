"""Entry point: ``bastion <verb>``. Exit codes: 0 ok, 1 a check failed, 2 usage error."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from bastion import __version__
from bastion.cli import audit, certs, integrity, keys, models, sign
from bastion.cli.help import PlainCommand, PlainGroup
from bastion.cli.serve import serve_command
from bastion.errors import BastionError

app = typer.Typer(
    name="bastion",
    help="A sovereign LLM server: verified local models behind an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=PlainGroup,
)
app.command("serve", cls=PlainCommand)(serve_command)
app.add_typer(models.app, name="models")
app.add_typer(sign.app, name="sign")
app.add_typer(integrity.app, name="integrity")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(certs.app, name="certs")


@app.command("version", cls=PlainCommand)
def version() -> None:
    """Print bastion's version."""
    typer.echo(__version__)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A sovereign LLM server: verified local models behind an OpenAI-compatible API."""


def main() -> None:
    """Run the CLI; every error, usage errors included, is one ``bastion: ...`` line on
    stderr (exit 2), the way the verbs report their own."""
    try:
        # standalone_mode=False: usage errors reach us instead of typer's boxed "Error" panel.
        code = app(prog_name="bastion", standalone_mode=False)  # also under the watchdog
    except NoArgsIsHelpError as exc:
        typer.echo(exc.format_message(), err=True)
        sys.exit(2)
    except UsageError as exc:
        typer.echo(f"bastion: {exc.format_message()}", err=True)
        if exc.ctx is not None:
            typer.echo(exc.ctx.get_usage(), err=True)
            typer.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        typer.echo(f"bastion: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("bastion: aborted", err=True)
        sys.exit(1)
    except BastionError as exc:
        typer.echo(f"bastion: {exc.message}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # how the watchdog starts the real `bastion serve`
    main()
