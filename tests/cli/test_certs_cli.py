"""``bastion certs`` as an operator types it: odd names and overwrites exit 2 and write
nothing; ``revoke`` shows in ``list``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from bastion.cli.certs import app


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"BASTION_HOME": str(home)})


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    assert run(home, "init").exit_code == 0
    return home


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../ca", "not a path"),
        ("..", "directories, not names"),
        ("../../..", "not a path"),
        ("a/b", "not a path"),
        ("/abs", "not a path"),
        ("ca", "reserved"),
        ("server", "reserved"),
        ("Alice", "lowercase"),
        ("\u0430lice", "ASCII"),
        ("", "empty"),
        ("x" * 300, "300 characters"),
        ("alice\n", "a-z, 0-9"),
    ],
)
def test_odd_names_exit_2_with_the_reason_and_write_nothing(
    home: Path, name: str, reason: str
) -> None:
    before = snapshot(home.parent)
    for command in (["issue", name], ["issue", name, "--force"], ["revoke", name]):
        result = run(home, *command)
        assert result.exit_code == 2, result.output
        assert reason in result.stderr
        assert "Traceback" not in result.output
    assert snapshot(home.parent) == before


def test_issue_refuses_to_overwrite_without_force(home: Path) -> None:
    assert run(home, "issue", "alice").exit_code == 0
    before = snapshot(home)
    result = run(home, "issue", "alice")
    assert result.exit_code == 2
    assert "--force" in result.stderr
    assert snapshot(home) == before
    result = run(home, "issue", "alice", "--force")
    assert result.exit_code == 0
    assert "the certificate it replaces is revoked" in result.stdout
    assert snapshot(home)["tls/clients/alice.crt"] != before["tls/clients/alice.crt"]
    assert snapshot(home)["tls/crl.pem"] != before["tls/crl.pem"]


def test_init_refuses_to_replace_the_ca_without_force(home: Path) -> None:
    before = snapshot(home)
    result = run(home, "init")
    assert result.exit_code == 2
    assert "--force" in result.stderr
    assert snapshot(home) == before


def test_revoke_shows_in_list(home: Path) -> None:
    run(home, "issue", "alice")
    run(home, "issue", "bob")
    result = run(home, "revoke", "alice")
    assert result.exit_code == 0
    assert "revoked" in result.stdout
    assert "already revoked" in run(home, "revoke", "alice").stdout
    lines = {line.split()[0]: line for line in run(home, "list").stdout.splitlines()}
    assert lines["clients/alice.crt"].endswith("REVOKED")
    assert not lines["clients/bob.crt"].endswith("REVOKED")


def test_revoking_an_unknown_name_says_so(home: Path) -> None:
    result = run(home, "revoke", "nobody")
    assert result.exit_code == 2
    assert "no client certificate named 'nobody'" in result.stderr
