"""``bastion keys create NAME [--scope ...]`` and ``keys list`` show what each key may do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.keys import app
from bastion.security.api_keys import ADMIN, INFERENCE, KeyStore

runner = CliRunner()


def _scopes_listed(name: str) -> str:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.stdout.splitlines() if row.startswith(name + " "))
    return line.split()[-1]


@pytest.mark.parametrize(
    ("args", "scopes"),
    [
        ([], {INFERENCE}),
        (["--scope", "admin"], {ADMIN}),
        (["--scope", "inference,admin"], {INFERENCE, ADMIN}),
        (["--scope", "inference", "--scope", "admin"], {INFERENCE, ADMIN}),
    ],
)
def test_create_stores_the_scopes_and_list_shows_them(
    home: Path, args: list[str], scopes: set[str]
) -> None:
    result = runner.invoke(app, ["create", "k1", *args])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    key = KeyStore(home).identify(token.encode())
    assert key is not None
    assert key.scopes == scopes
    assert _scopes_listed("k1") == ",".join(sorted(scopes))
    assert token not in runner.invoke(app, ["list"]).stdout


@pytest.mark.parametrize("scope", ["root", "admin,root", ""])
def test_an_unknown_scope_is_a_usage_error_and_creates_nothing(home: Path, scope: str) -> None:
    result = runner.invoke(app, ["create", "k1", "--scope", scope])
    assert result.exit_code == 2
    assert "scope" in result.output
    assert KeyStore(home).all() == []


def test_list_shows_keys_from_before_scopes_as_inference(home: Path) -> None:
    path = home / "keys" / "api-keys.json"
    path.parent.mkdir(parents=True)
    old = {"name": "legacy", "sha256": "ab" * 32, "created": "2025-01-01T00:00:00+00:00"}
    path.write_text(json.dumps({"keys": [{**old, "revoked": False}]}))
    assert _scopes_listed("legacy") == INFERENCE
