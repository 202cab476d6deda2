"""``bastion models`` as a new user would type it: clear messages, nothing half-written."""

from __future__ import annotations

import shutil
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


# Local weights and symlinks: the same rule refuses them at add and at pull (and serving).


def symlink_layout(tmp_path: Path, kind: str) -> Path:
    """Lay out ``kind`` under ``tmp_path/models`` (the allowed root); its local_path."""
    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (outside / "w.gguf").write_bytes(b"GGUF outside")
    if kind == "weights symlink":  # the weights file points elsewhere inside the roots
        (root / "store").mkdir()
        (root / "store" / "w.gguf").write_bytes(b"GGUF")
        (root / "real" / "w.gguf").symlink_to(root / "store" / "w.gguf")
        return root / "real"
    if kind == "weights symlink out of the roots":  # inside an allowed directory
        (root / "real" / "w.gguf").symlink_to(outside / "w.gguf")
        return root / "real"
    if kind == "directory component out of the roots":
        (outside / "mine").mkdir()
        (outside / "mine" / "w.gguf").write_bytes(b"GGUF")
        (root / "link").symlink_to(outside)
        return root / "link" / "mine"
    assert kind == "directory symlink inside the roots"
    (root / "real" / "w.gguf").write_bytes(b"GGUF")
    (root / "alias").symlink_to(root / "real")
    return root / "alias"


REFUSED = {
    "weights symlink": "is a symlink",
    "weights symlink out of the roots": "is a symlink",
    "directory component out of the roots": "outside the allowed roots",
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_add_refuses_local_weights_through_symlinks(home: Path, tmp_path: Path, kind: str) -> None:
    local = symlink_layout(tmp_path, kind)
    env = {"BASTION_STORE__ALLOWED_ROOTS": f'["{tmp_path / "models"}"]'}
    result = run(home, "add", "mine", "--local-path", str(local), "--file", "w.gguf", env=env)
    assert result.returncode == 2
    assert REFUSED[kind] in result.stderr
    assert not (home / "catalog.yaml").exists()


def twist(tmp_path: Path, kind: str) -> Path:
    """A plain local model (root/real/w.gguf, root/link/mine/w.gguf) and, once it has been
    added, ``twist_it`` re-points it into ``kind``; returns the local_path."""
    root, outside = tmp_path / "models", tmp_path / "outside"
    for directory in (root / "real", root / "link" / "mine", outside / "mine"):
        directory.mkdir(parents=True)
        (directory / "w.gguf").write_bytes(b"GGUF")
    return (
        root / "link" / "mine" if kind == "directory component out of the roots" else root / "real"
    )


def twist_it(tmp_path: Path, kind: str) -> None:
    root, outside = tmp_path / "models", tmp_path / "outside"
    if kind == "directory component out of the roots":
        shutil.rmtree(root / "link")
        (root / "link").symlink_to(outside)
        return
    target = outside / "mine" / "w.gguf"
    if kind == "weights symlink":
        (root / "store").mkdir()
        target = root / "store" / "w.gguf"
        target.write_bytes(b"GGUF")
    (root / "real" / "w.gguf").unlink()
    (root / "real" / "w.gguf").symlink_to(target)


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_pull_refuses_local_weights_that_became_symlinks_after_add(
    home: Path, tmp_path: Path, kind: str
) -> None:
    """Added while plain, then re-pointed: pull neither hashes nor signs it."""
    local = twist(tmp_path, kind)
    env = {"BASTION_STORE__ALLOWED_ROOTS": f'["{tmp_path / "models"}"]'}
    added = run(home, "add", "mine", "--local-path", str(local), "--file", "w.gguf", env=env)
    assert added.returncode == 0, added.stderr
    twist_it(tmp_path, kind)
    result = run(home, "pull", "mine", env=env)
    assert result.returncode != 0
    assert REFUSED[kind] in result.stderr
    assert not (home / "models" / "mine").exists()


def test_a_directory_symlink_that_stays_inside_the_roots_is_added_and_pulled(
    home: Path, tmp_path: Path
) -> None:
    local = symlink_layout(tmp_path, "directory symlink inside the roots")
    env = {"BASTION_STORE__ALLOWED_ROOTS": f'["{tmp_path / "models"}"]'}
    added = run(home, "add", "mine", "--local-path", str(local), "--file", "w.gguf", env=env)
    assert added.returncode == 0, added.stderr
    pulled = run(home, "pull", "mine", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert (home / "models" / "mine" / "CHECKSUMS.sha256").is_file()
    assert "local" in run(home, "list", env=env).stdout


def test_list_and_show_say_which_model_is_completion_only(home: Path) -> None:
    listing = run(home, "list")
    assert listing.returncode == 0, listing.stderr
    note = next(ln for ln in listing.stdout.splitlines() if "completion only" in ln)
    assert "gemma3-270m" in note
    assert "smollm2" not in note
    assert "/v1/completions" in note
    assert "completion_only: true" in run(home, "show", "gemma3-270m").stdout
    assert "completion_only" not in run(home, "show", "smollm2-135m-instruct").stdout


HTTP_URL = "http://mirror.example/m.gguf"


@pytest.mark.parametrize(
    "entry",
    [
        ["m", "--url", HTTP_URL, "--sha256", "ab" * 32],
        ["m", "--url", "http://10.0.0.5:8080/weights/m.gguf?x=1", "--sha256", "ab" * 32],
        ["--from-file", "FILE"],
    ],
)
def test_add_refuses_a_plain_http_url_that_pull_would_refuse(
    home: Path, tmp_path: Path, entry: list[str]
) -> None:
    spec = tmp_path / "entry.yaml"
    spec.write_text(f"name: m\nurl:\n  url: {HTTP_URL}\n  sha256: {'ab' * 32}\n")
    result = run(home, "add", *[str(spec) if a == "FILE" else a for a in entry])
    assert result.returncode == 2
    assert result.stderr.startswith("bastion: refusing a plain-http URL")
    assert "store.allow_http" in result.stderr
    assert not (home / "catalog.yaml").exists()


def test_add_takes_a_plain_http_url_when_the_store_allows_http(home: Path) -> None:
    result = run(
        home,
        "add",
        "m",
        "--url",
        HTTP_URL,
        "--sha256",
        "ab" * 32,
        env={"BASTION_STORE__ALLOW_HTTP": "true"},
    )
    assert result.returncode == 0, result.stderr
    assert HTTP_URL in (home / "catalog.yaml").read_text()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([], "holds no .gguf file: put the weights there, or name them with 'file'"),
        (["a.gguf", "b.gguf"], "holds 2 .gguf files (a.gguf, b.gguf): name the weights with"),
    ],
)
def test_a_local_directory_without_one_gguf_says_so_in_plain_words(
    home: Path, tmp_path: Path, files: list[str], message: str
) -> None:
    root = tmp_path / "models"
    (root / "mine").mkdir(parents=True)
    for name in files:
        (root / "mine" / name).write_bytes(b"GGUF")
    result = run(
        home,
        "add",
        "mine",
        "--local-path",
        str(root / "mine"),
        env={"BASTION_STORE__ALLOWED_ROOTS": f'["{root}"]'},
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "none .gguf" not in result.stderr
