"""Signed checkpoints that anchor the audit hash chain.

A hash chain alone proves only that its lines follow one another: whoever can write the file
can delete its first lines, drop its tail, or edit a line and recompute every hash after it.
A checkpoint is the server key's Ed25519 signature over "the chain ``chain`` of this log held
``seq`` records and record ``seq`` had hash ``head``", so a shorter or re-chained log no longer
matches, and a checkpoint copied from another log or server names the wrong chain. One JSON
line per checkpoint, in ``<log stem>.checkpoints.jsonl`` beside the log, so that the same
line can be sent to syslog or a remote sink and verified later with ``--checkpoint FILE``.

Reasons: ``rotate`` (the file being rotated out ends at ``seq``), ``retire`` (records up to
``seq`` left the disk because the oldest rotated file was dropped: the log may start later),
``periodic`` and ``shutdown``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.integrity.signing import PublicKey, SecretKey

DOMAIN = b"bastion audit checkpoint v1\n"
"""Signed before the body, so a checkpoint signature can never pass for another kind."""
REASONS = frozenset({"rotate", "retire", "periodic", "shutdown"})


class CheckpointError(ValueError):
    """A checkpoint line is malformed or its signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    log: str
    """The log file's name (``audit.jsonl``): which log this anchors."""
    chain: str
    """The random id every record of the chain carries (``""`` for records written before
    chain ids): binds the checkpoint to one chain, not to any log of that name signed with
    the same key (another server's, or one started afresh)."""
    segment: int
    """Number of the first record in the file holding ``seq``: that file's generation."""
    seq: int
    """Records written since the chain began, which is also the number of the head record."""
    head: str
    time: str
    reason: str
    key_id: str = ""
    signature: str = ""

    def _body(self) -> bytes:
        fields = asdict(self)
        del fields["signature"]
        return DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: SecretKey) -> Checkpoint:
        unsigned = replace(self, key_id=key.public.id_text, signature="")
        private = Ed25519PrivateKey.from_private_bytes(key.seed)
        signature = base64.b64encode(private.sign(unsigned._body())).decode()
        return replace(unsigned, signature=signature)

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def check(self, keys: list[PublicKey]) -> PublicKey:
        """The key whose signature this is; CheckpointError when none of ``keys`` signed it."""
        key = next((k for k in keys if k.id_text == self.key_id), None)
        if key is None:
            raise CheckpointError(f"signed by key {self.key_id}, which is not the server key")
        try:
            raw = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("signature is not base64") from None
        # Only the canonical text: unused low bits would let several lines carry one signature.
        if base64.b64encode(raw).decode() != self.signature:
            raise CheckpointError("signature is not canonical base64 (forged)")
        if not key.verify_raw(raw, self._body()):
            raise CheckpointError(f"signature does not verify with key {self.key_id} (forged)")
        return key

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """One checkpoint from a line, which may carry a prefix (a syslog header) before it."""
        start = text.find("{")
        try:
            data = json.loads(text[start:]) if start >= 0 else None
        except (ValueError, RecursionError):
            # Lines collected from syslog can be written by any local user: a deeply nested
            # one must be refused like any other, not crash the verifier.
            data = None
        if not isinstance(data, dict):
            raise CheckpointError("not a checkpoint line")
        try:
            checkpoint = cls(**data)
        except TypeError:
            raise CheckpointError("not a checkpoint line (unexpected fields)") from None
        text_fields = ("log", "chain", "head", "time", "reason", "key_id", "signature")
        valid = (
            all(isinstance(getattr(checkpoint, f), str) for f in text_fields)
            and all(type(getattr(checkpoint, f)) is int for f in ("segment", "seq"))
            and checkpoint.seq >= 1
            and checkpoint.reason in REASONS
        )
        if not valid:
            raise CheckpointError("not a checkpoint line (bad field values)")
        return checkpoint


def now() -> str:
    return dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds")


def checkpoints_path(log_path: Path) -> Path:
    """``audit.jsonl`` -> ``audit.checkpoints.jsonl``: outside the rotated files' pattern."""
    return log_path.with_name(f"{log_path.name.removesuffix('.jsonl')}.checkpoints.jsonl")


def append_line(path: Path, line: str) -> None:
    """Append and fsync: a checkpoint is rare, and it must outlive a crash right after."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-empty lines of a checkpoints file (local, or collected from syslog), numbered."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line.rstrip("\n")
