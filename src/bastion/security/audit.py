"""The audit log: one JSON line per request, hash-chained and anchored by signed checkpoints.

Each record carries ``seq`` (its number since the chain began), ``chain`` (a random id drawn
when the chain began, which every checkpoint of the chain signs too), ``prev`` (the previous
line's hash) and ``hash`` = SHA-256 of ``prev`` followed by the canonical JSON of the record
without ``hash``. Rotation renames the file to ``<name>.1`` (older ones shift up, the oldest beyond
``keep`` is dropped) and the chain continues in the new file. With a signing key, the log
writes a signed checkpoint (``checkpoints.py``) when a file is rotated out or dropped, and
whenever ``checkpoint()`` is called (periodically and at shutdown by the server).

Records of callers that never authenticated go to their own log (``AuditTrail``), so a flood
of refusals rotates only that file. Prompt and completion text are written only when
``audit.include_content`` is set.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.integrity.signing import SecretKey
from bastion.security.checkpoints import (
    Checkpoint,
    CheckpointError,
    append_line,
    checkpoints_path,
    now,
)
from bastion.settings import ensure_dir

GENESIS = "0" * 64
LOG_NAME = "audit.jsonl"
UNAUTHENTICATED_NAME = "unauthenticated.jsonl"
UNAUTHENTICATED = (None, "public")
"""Identities of requests that never presented a credential: refusals and public probes."""


def digest(prev: str, record: dict[str, Any]) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def parse_record(line: bytes | str) -> dict[str, Any] | None:
    """The record on ``line``; None for anything else, however malformed (a torn line, a line
    nested too deeply for the parser)."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return entry if isinstance(entry, dict) else None


def record_seq(entry: dict[str, Any] | None) -> int | None:
    seq = entry.get("seq") if entry else None
    return seq if type(seq) is int else None


def record_chain(entry: dict[str, Any]) -> str | None:
    """The record's chain id; None for a record written before chain ids."""
    chain = entry.get("chain")
    return chain if isinstance(chain, str) and chain else None


def _record(line: bytes) -> dict[str, Any] | None:
    entry = parse_record(line)
    return entry if entry is not None and isinstance(entry.get("hash"), str) else None


@dataclass(frozen=True)
class _Head:
    """The last record of the chain: what the next record follows and a checkpoint signs."""

    seq: int
    hash: str
    chain: str | None
    path: Path
    """The file holding it."""


class AuditLog:
    def __init__(
        self,
        directory: Path,
        *,
        name: str = LOG_NAME,
        max_bytes: int = 64 * 1024 * 1024,
        keep: int = 10,
        signer: SecretKey | None = None,
        ship: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = ensure_dir(directory)
        self.name = name
        self.path = directory / name
        self.checkpoints = checkpoints_path(self.path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.signer = signer
        self.ship = ship
        self._tail: tuple[int, int, _Head] | None = None
        """(inode, size, head) of the file as this process last wrote it: while nobody else
        has appended, the next line chains to it without re-reading the file."""
        self._anchored: tuple[int, str] | None = None
        """(seq, head) of this process's last checkpoint: an idle log is not re-signed."""

    def rotated(self, n: int) -> Path:
        return self.directory / f"{self.name}.{n}"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Several processes sharing one BASTION_HOME keep one chain."""
        with (self.directory / f".{self.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def append(self, record: dict[str, Any]) -> None:
        """Append under an exclusive lock, chaining to the line actually last in the file."""
        with self._locked():
            if self.path.exists() and self.path.stat().st_size >= self.max_bytes:
                self._rotate()
            cached = self._cached()
            head = cached or self._head()
            seq, chain = head.seq + 1, head.chain or secrets.token_hex(8)
            entry = {**record, "seq": seq, "chain": chain, "prev": head.hash}
            entry["hash"] = digest(head.hash, entry)
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
            if cached is None and _ends_open(self.path):
                # A crash tore the last line: start a line of our own rather than join it.
                line = "\n" + line
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                written = os.fstat(fd)
                tail = _Head(seq, entry["hash"], chain, self.path)
                self._tail = (written.st_ino, written.st_size, tail)
            finally:
                os.close(fd)

    def checkpoint(self, reason: str) -> Checkpoint | None:
        """Sign the current head; None without a key, for an empty log, or when a periodic
        checkpoint would repeat this process's last one."""
        if self.signer is None:
            return None
        with self._locked():
            head = self._cached() or self._head()
            if head.seq == 0 or (reason == "periodic" and self._anchored == (head.seq, head.hash)):
                return None
            return self._sign(self.signer, reason, head)

    def _sign(self, signer: SecretKey, reason: str, head: _Head) -> Checkpoint:
        first = _first_record(head.path) if head.path.is_file() else None
        checkpoint = Checkpoint(
            self.name, head.chain or "", record_seq(first) or 0, head.seq, head.hash, now(), reason
        )
        line = checkpoint.signed(signer).line()
        append_line(self.checkpoints, line)
        self._anchored = (head.seq, head.hash)
        if self.ship is not None:
            self.ship(line)
        return checkpoint

    def _cached(self) -> _Head | None:
        """The head this process last wrote, while the file is still as it left it."""
        try:
            current = self.path.stat()
        except FileNotFoundError:
            return None
        if self._tail is not None and self._tail[:2] == (current.st_ino, current.st_size):
            return self._tail[2]
        return None

    def _head(self) -> _Head:
        """The last record that parses: a torn last line (a crash mid-write) is passed over,
        so the numbering and the chain continue from the record before it."""
        for path in (self.path, self.rotated(1)):
            last = _last_record(path) if _nonempty(path) else None
            if last is not None:
                # A log from before sequence numbers: its records are counted.
                seq = record_seq(last)
                return _Head(seq or self._count(), last["hash"], record_chain(last), path)
        return _Head(0, GENESIS, None, self.path)

    def _count(self) -> int:
        files = [self.rotated(n) for n in range(self.keep, 0, -1)] + [self.path]
        total = 0
        for path in files:
            if path.is_file():
                with path.open("rb") as handle:
                    total += sum(1 for line in handle if _record(line.rstrip(b"\n")))
        return total

    def _rotate(self) -> None:
        signer = self.signer
        if signer is not None:
            head = self._head()
            retired = self.rotated(self.keep)
            last = _last_record(retired) if _nonempty(retired) else None
            seq = record_seq(last)
            if last is not None and seq is not None:
                # Signed with the chain of the head: the retired records may predate chain ids.
                self._sign(signer, "retire", _Head(seq, last["hash"], head.chain, retired))
                self._prune(seq, head.chain or "")
            if head.seq:
                self._sign(signer, "rotate", head)
        for n in range(self.keep - 1, 0, -1):
            older = self.rotated(n)
            if older.exists():
                older.replace(self.rotated(n + 1))
        self.path.replace(self.rotated(1))

    def _prune(self, retired: int, chain: str) -> None:
        """Drop this chain's checkpoints of records that left the disk; keep anything
        unreadable or foreign for ``audit verify`` to report."""
        kept = []
        for line in self.checkpoints.read_text(encoding="utf-8").splitlines():
            try:
                old = Checkpoint.parse(line)
            except CheckpointError:
                kept.append(line)
                continue
            ours = old.log == self.name and old.chain in (chain, "")
            if not ours or old.seq > retired or (old.reason == "retire" and old.seq == retired):
                kept.append(line)
        tmp = self.checkpoints.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        append_line(tmp, "\n".join(kept))
        tmp.replace(self.checkpoints)


class AuditTrail:
    """Routes each request's record: authenticated callers to ``audit.jsonl``, requests that
    never authenticated to ``unauthenticated.jsonl`` with its own size cap, so a flood of
    refusals cannot rotate the records of real callers out."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        unauthenticated_max_bytes: int,
        signer: SecretKey | None = None,
        ship: Callable[[str], None] | None = None,
    ) -> None:
        self.main = AuditLog(directory, max_bytes=max_bytes, signer=signer, ship=ship)
        self.unauthenticated = AuditLog(
            directory,
            name=UNAUTHENTICATED_NAME,
            max_bytes=unauthenticated_max_bytes,
            keep=3,
            signer=signer,
            ship=ship,
        )

    def append(self, entry: dict[str, Any]) -> None:
        target = self.unauthenticated if entry.get("identity") in UNAUTHENTICATED else self.main
        target.append(entry)

    def checkpoint(self, reason: str) -> list[Checkpoint]:
        written = (log.checkpoint(reason) for log in (self.main, self.unauthenticated))
        return [checkpoint for checkpoint in written if checkpoint is not None]


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _ends_open(path: Path) -> bool:
    """Whether the file's last line lacks its newline (torn by a crash)."""
    try:
        with path.open("rb") as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _first_record(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as handle:
        return next((e for line in handle if (e := _record(line.rstrip(b"\n")))), None)


def _last_record(path: Path) -> dict[str, Any] | None:
    return next((e for line in _lines_backwards(path) if (e := _record(line))), None)


def _lines_backwards(path: Path, block: int = 65536) -> Iterator[bytes]:
    """The file's non-empty lines, last first, read block by block (records with content
    can be long, and a torn line may hide the last good one)."""
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        pending = b""
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            lines = (handle.read(end - start) + pending).split(b"\n")
            end = start
            pending = lines[0]  # may continue in the block before
            yield from (line for line in reversed(lines[1:]) if line)
        if pending:
            yield pending
