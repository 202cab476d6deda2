"""``bastion serve`` through the launcher and its watchdog: exit codes and messages pass through."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import bastion_command


def test_a_config_error_in_the_watched_server_exits_two_with_its_message(home: Path) -> None:
    result = bastion_command({"BASTION_HOME": str(home)}, "serve", "--model", "nope")
    assert result.returncode == 2
    assert "bastion: The model 'nope' is not in the catalog" in result.stderr
    assert "died of" not in result.stderr  # an ordinary exit, not a crash


def test_usage_errors_and_help_speak_as_bastion(home: Path) -> None:
    env = {"BASTION_HOME": str(home)}
    wrong = bastion_command(env, "serve", "--bogus")
    assert wrong.returncode == 2
    assert "Usage: bastion serve" in wrong.stderr
    helped = bastion_command(env, "serve", "--help")
    assert helped.returncode == 0
    assert "--tls-port" in helped.stdout
    assert "watchdog" not in helped.stdout  # the launcher's own option stays hidden
