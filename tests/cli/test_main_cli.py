"""``bastion`` itself: ``--version``, help pages that read like a normal CLI's, and every error
as one ``bastion: ...`` line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bastion import __version__
from bastion.cli.main import app
from tests.conftest import bastion_command

runner = CliRunner()

# Typer's own type labels and brace-wrapped arguments, and click's upper-case type names.
TYPE_LABEL = re.compile(r"<(bool|int|str|float|path|list\[[^\]]*\])>|\{[a-z_]+\}")
CLICK_TYPES = re.compile(r"(--[a-z-]+|\*)\s+(TEXT|INTEGER|BOOLEAN|FLOAT|PATH)\b")


def _command_paths() -> list[list[str]]:
    """Every group and command of the tree, as the words that reach it."""
    paths: list[list[str]] = [[]]
    root = typer.main.get_command(app)
    stack = [([], root)]
    while stack:
        prefix, group = stack.pop()
        for name, command in getattr(group, "commands", {}).items():
            if command.hidden:
                continue
            paths.append([*prefix, name])
            stack.append(([*prefix, name], command))
    return paths


def test_every_verb_is_walked() -> None:
    paths = {" ".join(p) for p in _command_paths()}
    assert {"", "serve", "models show", "sign keygen", "certs issue", "audit verify"} <= paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "bastion")
def test_help_pages_show_no_type_labels(home: Path, path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage: bastion" in result.stdout
    assert not TYPE_LABEL.search(result.stdout), result.stdout
    assert not CLICK_TYPES.search(result.stdout), result.stdout


def test_options_that_take_a_value_name_it_and_flags_stay_bare(home: Path) -> None:
    serve = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).stdout
    assert re.search(r"--port\s+PORT\s", serve)
    assert re.search(r"--host\s+HOST\s", serve)
    keygen = runner.invoke(app, ["sign", "keygen", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--no-force" not in keygen  # a plain flag, not a --x/--no-x pair
    show = runner.invoke(app, ["models", "show", "--help"], env={"COLUMNS": "200"}).stdout
    assert "Usage: bastion models show [OPTIONS] NAME" in show


@pytest.mark.parametrize("args", [["--version"], ["version"]])
def test_the_version_through_the_launcher(home: Path, args: list[str]) -> None:
    result = bastion_command({"BASTION_HOME": str(home)}, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __version__


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "show"], "bastion: Missing argument 'NAME'."),
        (["models", "show", "a", "b"], "bastion: Got unexpected extra argument"),
        (["serve", "--port", "x"], "bastion: Invalid value for '--port'"),
        (["serve", "--bogus"], "bastion: No such option: --bogus"),
        (["nosuch"], "bastion: No such command 'nosuch'."),
        (["models", "show", "nosuch"], "bastion: The model 'nosuch' is not in the catalog"),
        (["keys", "revoke", "nosuch"], "bastion: "),
        (["sign", "sign", "/nonexistent"], "bastion: /nonexistent has no CHECKSUMS.sha256"),
    ],
)
def test_every_error_is_one_bastion_line(home: Path, args: list[str], message: str) -> None:
    result = bastion_command({"BASTION_HOME": str(home)}, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert "error:" not in result.stderr.lower()
    assert "╭" not in result.stderr  # no boxed panel
