"""Signed model directories: signature first, then every file, each problem named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.integrity.manifest import MANIFEST_NAME, write_manifest
from bastion.integrity.signing import SecretKey
from bastion.integrity.trust import IntegrityError, check_directory, sign_directory
from bastion.integrity.verify import SIGNATURE_NAME
from tests.conftest import bastion_command

KEY = SecretKey.generate()
FILES = {"model.gguf": b"GGUF" + bytes(range(256)) * 8, "tokenizer.json": b'{"v": 1}'}


def signed_dir(root: Path) -> Path:
    directory = root / "model"
    directory.mkdir()
    for name, data in FILES.items():
        (directory / name).write_bytes(data)
    write_manifest(directory, list(FILES))
    sign_directory(directory, KEY)
    return directory


def check(directory: Path) -> IntegrityError:
    with pytest.raises(IntegrityError) as info:
        check_directory(directory, [KEY.public], require_signature=True)
    return info.value


def test_happy_path_names_the_signer_and_root(tmp_path: Path) -> None:
    provenance = check_directory(signed_dir(tmp_path), [KEY.public], require_signature=True)
    assert provenance.signer == KEY.public.id_text
    assert len(provenance.root_digest) == 64


def test_tampered_missing_extra_symlink_and_special_files_are_each_named(
    tmp_path: Path,
) -> None:
    directory = signed_dir(tmp_path)
    (directory / "model.gguf").write_bytes(b"evil")
    (directory / "tokenizer.json").unlink()
    (directory / "notes.txt").write_text("unlisted")
    (directory / "link").symlink_to("/etc/passwd")
    os.mkfifo(directory / "pipe")
    problems = "\n".join(check(directory).problems)
    assert "SHA-256 mismatch: model.gguf" in problems
    assert "missing: tokenizer.json" in problems
    assert "not in the manifest: notes.txt" in problems
    assert "symlink or special file refused: link" in problems
    assert "symlink or special file refused: pipe" in problems


def test_missing_manifest_and_bad_syntax(tmp_path: Path) -> None:
    directory = signed_dir(tmp_path)
    (directory / MANIFEST_NAME).write_text("# comment is fine\nnot a line\n")
    assert "line 2" in check(directory).message
    (directory / MANIFEST_NAME).unlink()
    assert "is missing" in check(directory).message


def test_one_changed_byte_in_the_manifest_fails_the_signature(tmp_path: Path) -> None:
    directory = signed_dir(tmp_path)
    text = (directory / MANIFEST_NAME).read_text()
    (directory / MANIFEST_NAME).write_text(text.replace(text[0], "f" if text[0] != "f" else "e", 1))
    assert "signature verification failed" in check(directory).message


def test_unsigned_directory_is_refused_when_signatures_are_required(tmp_path: Path) -> None:
    directory = signed_dir(tmp_path)
    (directory / SIGNATURE_NAME).unlink()
    assert "require_signature" in check(directory).message
    assert check_directory(directory, [], require_signature=False).signer is None


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(sorted(FILES)),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_changing_any_byte_of_any_file_fails(
    tmp_path_factory: pytest.TempPathFactory, which: str, position: int, flip: int
) -> None:
    directory = signed_dir(tmp_path_factory.mktemp("prop"))
    data = bytearray(FILES[which])
    data[position % len(data)] ^= flip
    (directory / which).write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        check_directory(directory, [KEY.public], require_signature=True)


def test_cli_verify_exits_1_on_a_changed_manifest_byte(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"BASTION_HOME": str(home)}
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "w.gguf").write_bytes(b"weights")
    write_manifest(directory, ["w.gguf"])
    assert bastion_command(env, "sign", "keygen").returncode == 0
    assert bastion_command(env, "sign", "sign", str(directory)).returncode == 0
    ok = bastion_command(env, "sign", "verify", str(directory))
    assert ok.returncode == 0, ok.stderr
    manifest = directory / MANIFEST_NAME
    raw = bytearray(manifest.read_bytes())
    raw[0] = ord("0") if raw[0] != ord("0") else ord("1")
    manifest.write_bytes(bytes(raw))
    failed = bastion_command(env, "sign", "verify", str(directory))
    assert failed.returncode == 1
    assert "signature verification failed" in failed.stderr
