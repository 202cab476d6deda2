"""The checkpoint line: signed by the server key, any changed byte refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.integrity.signing import SecretKey
from bastion.security.checkpoints import Checkpoint, CheckpointError, checkpoints_path

KEY = SecretKey.generate()
SIGNED = Checkpoint(
    "audit.jsonl", "5eed5eed5eed5eed", 41, 57, "ab" * 32, "2026-11-25T13:00:00+00:00", "periodic"
).signed(KEY)


def test_a_signed_checkpoint_round_trips_and_names_its_key() -> None:
    parsed = Checkpoint.parse(SIGNED.line())
    assert parsed == SIGNED
    assert parsed.key_id == KEY.public.id_text
    assert parsed.check([KEY.public]) == KEY.public


def test_a_syslog_prefix_before_the_line_is_ignored() -> None:
    line = f"<14>Nov 25 13:00:00 box bastion-audit-checkpoint: {SIGNED.line()}"
    assert Checkpoint.parse(line) == SIGNED


def test_every_changed_byte_is_refused() -> None:
    line = SIGNED.line()
    for index in range(len(line)):
        for replacement in ("0", "7", "x", '"'):
            mutated = line[:index] + replacement + line[index + 1 :]
            if mutated == line:
                continue
            with pytest.raises(CheckpointError):
                Checkpoint.parse(mutated).check([KEY.public])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "{}",
        "[1, 2]",
        '{"log": "audit.jsonl"}',
        SIGNED.line().replace('"seq":57', '"seq":"57"'),
        SIGNED.line().replace('"seq":57', '"seq":0'),
        SIGNED.line().replace('"seq":57', '"seq":true'),
        SIGNED.line().replace('"periodic"', '"whenever"'),
        SIGNED.line()[:-1] + ',"extra":1}',
        SIGNED.line().replace('"chain":"5eed5eed5eed5eed",', ""),
        SIGNED.line().replace('"chain":"5eed5eed5eed5eed"', '"chain":5'),
        SIGNED.line().replace('"periodic"', '["periodic"]'),
    ],
)
def test_malformed_lines_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(text)


@pytest.mark.parametrize("field", ["signature", "key_id"])
@pytest.mark.parametrize("value", [5, None, ["x"], {"a": 1}, True])
def test_a_key_id_or_signature_that_is_not_text_is_refused(field: str, value: object) -> None:
    """Lines collected from syslog can be written by any local user."""
    fields = json.loads(SIGNED.line())
    fields[field] = value
    with pytest.raises(CheckpointError, match="bad field values"):
        Checkpoint.parse(json.dumps(fields))


DEEP = 100_000


@pytest.mark.parametrize(
    "text",
    [
        '{"log":' * DEEP + "1" + "}" * DEEP,
        '{"log":' + "[" * DEEP + "]" * DEEP + "}",
        "<14>Nov 25 13:00:00 box x: " + '{"signature":' + '{"a":' * DEEP + "1" + "}" * DEEP + "}",
    ],
    ids=["objects", "arrays", "syslog-prefixed"],
)
def test_a_deeply_nested_line_is_refused_not_a_crash(text: str) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint line"):
        Checkpoint.parse(text)


def test_another_key_or_no_key_is_refused() -> None:
    other = SecretKey.generate()
    with pytest.raises(CheckpointError, match="not the server key"):
        SIGNED.check([other.public])
    with pytest.raises(CheckpointError, match="not the server key"):
        SIGNED.check([])
    # Another key claiming the server key's id still fails the signature.
    impostor = SecretKey(KEY.key_id, other.seed)
    with pytest.raises(CheckpointError, match="forged"):
        Checkpoint.parse(SIGNED.line()).signed(impostor).check([KEY.public])


def test_the_checkpoints_file_sits_beside_the_log_outside_the_rotation_pattern() -> None:
    log = Path("/x/audit/audit.jsonl")
    assert checkpoints_path(log) == Path("/x/audit/audit.checkpoints.jsonl")
    assert not checkpoints_path(log).name.startswith("audit.jsonl.")
