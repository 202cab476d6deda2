"""CHECKSUMS.sha256 in coreutils format, checked against the real sha256sum."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from bastion.integrity.manifest import (
    MANIFEST_NAME,
    ManifestError,
    parse,
    read_manifest,
    render,
    write_manifest,
)

SHA256SUM = shutil.which("sha256sum")


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"weights")
    written = write_manifest(tmp_path, ["model.gguf"])
    assert read_manifest(tmp_path) == written
    assert written.entries["model.gguf"] == hashlib.sha256(b"weights").hexdigest()
    assert (tmp_path / MANIFEST_NAME).stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(SHA256SUM is None, reason="coreutils sha256sum not installed")
def test_real_sha256sum_accepts_bastion_manifest_with_escaped_names(tmp_path: Path) -> None:
    names = ["plain.bin", "back\\slash.bin", "new\nline.bin"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * 100)
    write_manifest(tmp_path, names)
    result = subprocess.run(
        [SHA256SUM, "-c", MANIFEST_NAME], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(SHA256SUM is None, reason="coreutils sha256sum not installed")
def test_manifest_written_by_sha256sum_parses_to_the_same_digests(tmp_path: Path) -> None:
    names = ["a.bin", "odd\\name.bin"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    out = subprocess.run(
        [SHA256SUM, "--", *names], cwd=tmp_path, capture_output=True, check=True
    ).stdout.decode()
    manifest = parse(out)
    assert manifest.entries == {n: hashlib.sha256(n.encode()).hexdigest() for n in names}


def test_comments_blank_lines_crlf_and_binary_marker() -> None:
    digest = "ab" * 32
    manifest = parse(f"# comment\r\n\r\n{digest} *model.gguf\r\n")
    assert manifest.entries == {"model.gguf": digest}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nothex  model.gguf\n", "line 1"),
        (f"{'ab' * 32}  ../escape\n", "unsafe"),
        (f"{'ab' * 32}  /etc/passwd\n", "unsafe"),
        (f"# ok\n{'ab' * 32}  a\n{'ab' * 32}  a\n", "line 3"),
    ],
)
def test_malformed_or_unsafe_lines_are_rejected(text: str, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse(text)


def test_render_is_sorted_and_stable() -> None:
    entries = {"b": "11" * 32, "a": "22" * 32}
    assert render(entries) == f"{'22' * 32}  a\n{'11' * 32}  b\n"
