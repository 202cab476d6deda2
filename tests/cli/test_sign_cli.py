"""``bastion sign keygen`` after the server has made its key: it shows that key and exits 0."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bastion.cli.sign import app
from bastion.integrity.trust import keys_dir, local_key

runner = CliRunner()


def test_keygen_on_a_fresh_home_creates_the_key(home: Path) -> None:
    result = runner.invoke(app, ["keygen"])
    assert result.exit_code == 0, result.output
    key = local_key(home)
    assert f"key ID {key.public.id_text}" in result.stdout
    assert str(keys_dir(home) / "signing.key") in result.stdout


def test_keygen_after_a_first_serve_shows_the_existing_key_and_keeps_it(home: Path) -> None:
    made = local_key(home)  # what `bastion serve` does on first use
    before = (keys_dir(home) / "signing.key").read_bytes()
    for _ in range(2):  # and again: still the same answer
        result = runner.invoke(app, ["keygen"])
        assert result.exit_code == 0, result.output
        assert "already has a signing key" in result.stdout
        assert f"key ID {made.public.id_text}" in result.stdout
        assert str(keys_dir(home) / "signing.key") in result.stdout
        assert str(keys_dir(home) / "signing.pub") in result.stdout
        assert "--force" in result.stdout
    assert (keys_dir(home) / "signing.key").read_bytes() == before


def test_keygen_force_replaces_the_key(home: Path) -> None:
    old = local_key(home).public.id_text
    result = runner.invoke(app, ["keygen", "--force"])
    assert result.exit_code == 0, result.output
    new = local_key(home).public.id_text
    assert new != old
    assert f"key ID {new}" in result.stdout


def test_an_unreadable_key_is_named_with_the_way_out(home: Path) -> None:
    local_key(home)
    (keys_dir(home) / "signing.key").write_text("not a key\n")
    result = runner.invoke(app, ["keygen"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"bastion: {keys_dir(home) / 'signing.key'}")
    assert "--force" in result.stderr
