"""``bastion integrity check``: flip a byte of a model and it exits 1 naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bastion.cli.integrity import app
from tests.conftest import bastion_command

MODEL = "smollm2-135m-instruct"
WEIGHTS = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_check_fails_on_a_flipped_byte_and_passes_when_restored(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"BASTION_HOME": str(home)}
    assert bastion_command(env, "models", "pull", MODEL).returncode == 0
    assert bastion_command(env, "integrity", "freeze").returncode == 0
    ok = bastion_command(env, "integrity", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"ok   model {MODEL}" in ok.stdout

    weights = home / "models" / MODEL / WEIGHTS
    original = weights.read_bytes()[5000:5001]
    with weights.open("r+b") as handle:
        handle.seek(5000)
        handle.write(bytes([original[0] ^ 0x80]))
    failed = bastion_command(env, "integrity", "check", "--json")
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["ok"] is False
    assert WEIGHTS in report["models"][MODEL]["problem"]
    log = (home / "logs" / "integrity.log").read_text()
    assert WEIGHTS in log

    with weights.open("r+b") as handle:
        handle.seek(5000)
        handle.write(original)
    assert bastion_command(env, "integrity", "check").returncode == 0


def test_check_says_how_to_register_deployed_files_today(home: Path) -> None:
    """No `bastion deploy` exists: the note names the file to write and its shape."""
    result = CliRunner().invoke(app, ["check", "--json"])
    assert result.exit_code == 0, result.output
    notes = " ".join(json.loads(result.stdout)["notes"])
    assert "bastion deploy" not in notes
    assert str(home / "integrity" / "deployed.json") in notes
    assert '"path"' in notes
    assert '"canonical"' in notes
