"""``bastion models`` as a new user would type it: clear messages, nothing half-written."""

from __future__ import annotations

from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.conftest import bastion_models


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> CompletedProcess[str]:
    return bastion_models({"BASTION_HOME": str(home), **(env or {})}, *args)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad Name", "--url", "https://example.org/m.gguf", "--sha256", "ab" * 32], "name"),
        (["m", "--url", "https://example.org/m.gguf"], "sha256"),
        (["m", "--url", "ftp://example.org/m.gguf", "--sha256", "ab" * 32], "url"),
        (["m"], "exactly one source"),
        (["m", "--local-path", "relative/dir"], "absolute"),
        (["m", "--local-path", "/srv/models/../etc"], "'.' or '..'"),
        (["m", "--local-path", "/srv/models/x"], "store.allowed_roots"),
        (["m", "--ctx", "5"], "ctx"),
    ],
)
def test_bad_entries_say_what_to_fix_and_write_nothing(
    home: Path, args: list[str], message: str
) -> None:
    result = run(home, "add", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (home / "catalog.yaml").exists()


def test_missing_local_file_is_named(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "mine").mkdir(parents=True)
    result = run(
        home,
        "add",
        "mine",
        "--local-path",
        str(root / "mine"),
        "--file",
        "w.gguf",
        env={"BASTION_STORE__ALLOWED_ROOTS": f'["{root}"]'},
    )
    assert result.returncode == 2
    assert "file w.gguf is missing" in result.stderr


def test_local_model_is_added_and_rm_refuses_to_delete_it(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "w.gguf").write_bytes(b"GGUF")
    env = {"BASTION_STORE__ALLOWED_ROOTS": f'["{root}"]'}
    assert run(home, "add", "mine", "--local-path", str(root / "mine"), env=env).returncode == 0
    assert "local" in run(home, "list", env=env).stdout
    result = run(home, "rm", "mine", env=env)
    assert result.returncode == 2
    assert "never deletes" in result.stderr
    assert (root / "mine" / "w.gguf").exists()


def test_pull_list_du_and_rm_of_a_builtin(home: Path) -> None:
    pulled = run(home, "pull", "smollm2-135m-instruct")
    assert pulled.returncode == 0, pulled.stderr
    listing = run(home, "list").stdout
    line = next(ln for ln in listing.splitlines() if "smollm2-135m-instruct" in ln)
    assert "pulled" in line
    assert "yes" in line
    assert "MiB" in run(home, "du").stdout
    assert run(home, "rm", "smollm2-135m-instruct").returncode == 0
    assert "not pulled" in run(home, "list").stdout
    assert "smollm2-135m-instruct" in run(home, "show", "smollm2-135m-instruct").stdout


def test_hub_pull_while_offline_names_the_setting(home: Path) -> None:
    added = run(home, "add", "remote", "--hf", "someone/some-model", "--file", "m.gguf")
    assert added.returncode == 0, added.stderr
    result = run(home, "pull", "remote")
    assert result.returncode == 1
    assert "BASTION_STORE__OFFLINE=false" in result.stderr
    assert not (home / "models" / "remote").exists()


def test_invalid_operator_entry_is_skipped_with_a_warning(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "catalog.yaml").write_text("models:\n  broken:\n    description: no source\n")
    result = run(home, "list")
    assert result.returncode == 0
    assert "'broken' skipped" in result.stderr
    assert "smollm2-135m-instruct" in result.stdout


def test_backends_and_suggest(home: Path) -> None:
    assert "llama-cpp-python" in run(home, "backends").stdout
    assert "smollm2-135m-instruct" in run(home, "suggest", "--use-case", "chat").stdout
    assert run(home, "suggest", "--use-case", "embedding").returncode == 1
