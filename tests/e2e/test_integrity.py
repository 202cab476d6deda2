"""Flip one byte of the default model: serve refuses it naming the file; restore it and it
serves again."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import bastion_command
from tests.e2e.conftest import start_server

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
WEIGHTS = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_flipped_byte_is_refused_by_name_and_a_restored_file_serves(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"BASTION_HOME": str(home)}
    assert bastion_command(env, "models", "pull", MODEL).returncode == 0
    directory = home / "models" / MODEL
    weights = directory / WEIGHTS
    original = weights.read_bytes()[1000:1001]
    with weights.open("r+b") as handle:
        handle.seek(1000)
        handle.write(bytes([original[0] ^ 0x01]))

    server = start_server(home, wait_ready=False)
    try:
        server.wait_for_log(rf"{MODEL} is not served: .*SHA-256 mismatch: {WEIGHTS}")
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.base_url}/ready").status_code != 503:
            assert time.monotonic() < deadline
        ready = httpx.get(f"{server.base_url}/ready").json()
        assert ready["models"][MODEL]["state"] == "failed"
        assert str(home) not in str(ready)  # no server paths to unauthenticated callers
        chat = httpx.post(
            f"{server.v1}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert chat.status_code == 503
        assert chat.json()["error"]["code"] == "model_unavailable"
    finally:
        server.stop()
    verified = bastion_command(env, "sign", "verify", str(directory))
    assert verified.returncode == 1
    assert WEIGHTS in verified.stderr

    with weights.open("r+b") as handle:
        handle.seek(1000)
        handle.write(original)
    assert bastion_command(env, "sign", "verify", str(directory)).returncode == 0
    server = start_server(home)
    try:
        card = httpx.get(f"{server.v1}/models").json()["data"][0]
        assert card["signer"] is not None
        assert card["manifest_digest"].startswith("sha256:")
        reply = server.client(timeout=60).chat.completions.create(
            model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.system_fingerprint == (f"{card['manifest_digest']}/key:{card['signer']}")
    finally:
        server.stop()


def test_an_answer_s_fingerprint_matches_models_show_v1_models_and_the_files(
    tmp_path: Path,
) -> None:
    """The recipe of docs/integrity.md: the three places name the same digests, and each can
    be recomputed from the files with sha256sum."""
    home = tmp_path / "home"
    env = {"BASTION_HOME": str(home)}
    assert bastion_command(env, "models", "pull", MODEL).returncode == 0
    shown = yaml.safe_load(bastion_command(env, "models", "show", MODEL).stdout)["provenance"]
    directory = home / "models" / MODEL
    assert shown["weights"] == WEIGHTS
    assert (
        shown["digest"]
        == "sha256:" + hashlib.sha256((directory / WEIGHTS).read_bytes()).hexdigest()
    )
    manifest = (directory / "CHECKSUMS.sha256").read_bytes()
    assert shown["manifest_digest"] == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert f"{shown['digest'].removeprefix('sha256:')}  {WEIGHTS}".encode() in manifest
    server = start_server(home)
    try:
        card = httpx.get(f"{server.v1}/models").json()["data"][0]
        reply = server.client(timeout=60).completions.create(model=MODEL, max_tokens=2, prompt="1")
    finally:
        server.stop()
    for label in ("digest", "manifest_digest", "signer", "system_fingerprint"):
        assert card[label] == shown[label], label
    assert reply.system_fingerprint == shown["system_fingerprint"]
    assert reply.system_fingerprint == f"{shown['manifest_digest']}/key:{shown['signer']}"
