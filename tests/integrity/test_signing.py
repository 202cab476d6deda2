"""minisign-compatible signatures: interoperate with the real minisign, fail on any change."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bastion.integrity.signing import PublicKey, SecretKey, SignatureError, verify

MINISIGN = shutil.which("minisign")


def need_minisign() -> str:
    if MINISIGN is None:
        if os.environ.get("CI"):
            pytest.fail("minisign is not installed; .ci/run installs it")
        pytest.skip("minisign is not installed (apt-get install minisign)")
    return MINISIGN


KEY = SecretKey.generate()
DATA = b"c0ffee  model.gguf\n"


def test_sign_and_verify_round_trip() -> None:
    signature = KEY.sign(DATA, trusted_comment="bastion-manifest root=abc")
    verified = verify(DATA, signature, [KEY.public])
    assert verified.key == KEY.public
    assert verified.trusted_comment == "bastion-manifest root=abc"


def test_key_files_round_trip() -> None:
    assert SecretKey.parse(KEY.dump()) == KEY
    assert PublicKey.parse(KEY.public.dump()) == KEY.public


def test_a_changed_byte_in_the_data_fails() -> None:
    signature = KEY.sign(DATA, trusted_comment="t")
    with pytest.raises(SignatureError, match="signature verification failed"):
        verify(DATA.replace(b"c0ffee", b"c0ffef"), signature, [KEY.public])


def test_wrong_key_fails() -> None:
    other = SecretKey.generate()
    signature = other.sign(DATA, trusted_comment="t")
    with pytest.raises(SignatureError, match="not a trusted signer"):
        verify(DATA, signature, [KEY.public])
    impostor = PublicKey(other.key_id, KEY.public.key)  # right id, wrong key
    with pytest.raises(SignatureError, match="signature verification failed"):
        verify(DATA, signature, [impostor])


def test_edited_trusted_comment_fails() -> None:
    signature = KEY.sign(DATA, trusted_comment="root=aaa")
    edited = signature.replace("trusted comment: root=aaa", "trusted comment: root=bbb")
    with pytest.raises(SignatureError, match="signature verification failed"):
        verify(DATA, edited, [KEY.public])


def test_every_single_byte_change_outside_the_untrusted_comment_fails() -> None:
    """Exhaustive: each position, each of the 255 other values. Only the free-text first line
    may change (minisign does not sign it either)."""
    signature = KEY.sign(DATA, trusted_comment="root=abc").encode()
    first_line_end = signature.index(b"\n")
    accepted = []
    for at in range(first_line_end, len(signature)):
        for flip in range(1, 256):
            mutated = bytearray(signature)
            mutated[at] ^= flip
            try:
                verify(DATA, mutated.decode(), [KEY.public])
            except (SignatureError, UnicodeDecodeError):
                continue
            accepted.append((at, flip))
    assert accepted == []


def test_real_minisign_accepts_bastion_signatures(tmp_path: Path) -> None:
    minisign = need_minisign()
    (tmp_path / "data").write_bytes(DATA)
    (tmp_path / "data.minisig").write_text(KEY.sign(DATA, trusted_comment="file:data"))
    (tmp_path / "key.pub").write_text(KEY.public.dump())
    result = subprocess.run(
        [minisign, "-V", "-p", "key.pub", "-m", "data"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "file:data" in result.stdout


def test_bastion_accepts_signatures_and_keys_made_by_minisign(tmp_path: Path) -> None:
    minisign = need_minisign()
    (tmp_path / "data").write_bytes(DATA)
    subprocess.run(
        [minisign, "-G", "-W", "-p", "ms.pub", "-s", "ms.key"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    subprocess.run(
        [minisign, "-S", "-s", "ms.key", "-m", "data", "-t", "made by minisign"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    public = PublicKey.parse((tmp_path / "ms.pub").read_text())
    verified = verify(DATA, (tmp_path / "data.minisig").read_text(), [public])
    assert verified.trusted_comment == "made by minisign"
    assert SecretKey.parse((tmp_path / "ms.key").read_text()).public == public
