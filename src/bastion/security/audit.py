"""The audit log: one JSON line per request, hash-chained so that an edited, deleted or
reordered line is found.

Each record carries ``prev`` (the previous line's hash) and ``hash`` = SHA-256 of ``prev``
followed by the canonical JSON of the record without ``hash``. Rotation renames the file to
``audit.jsonl.1`` (older ones shift up) and the chain continues in the new file. Prompt and
completion text are written only when ``audit.include_content`` is set.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.settings import ensure_dir

GENESIS = "0" * 64
LOG_NAME = "audit.jsonl"


def _digest(prev: str, record: dict[str, Any]) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


class AuditLog:
    def __init__(
        self, directory: Path, *, max_bytes: int = 64 * 1024 * 1024, keep: int = 10
    ) -> None:
        self.directory = ensure_dir(directory)
        self.path = directory / LOG_NAME
        self.max_bytes = max_bytes
        self.keep = keep
        self._tail: tuple[int, int, str] | None = None
        """(inode, size, last hash) of the file as this process last wrote it: while nobody
        else has appended, the next line chains to it without re-reading the file."""

    def _last_hash(self) -> str:
        for path in (self.path, self.directory / f"{LOG_NAME}.1"):
            if path.is_file() and path.stat().st_size:
                last = _last_line(path)
                try:
                    return str(json.loads(last)["hash"])
                except (ValueError, KeyError):
                    return GENESIS
        return GENESIS

    def append(self, record: dict[str, Any]) -> None:
        """Append under an exclusive lock, chaining to the line actually last in the file:
        several processes sharing one BASTION_HOME keep one chain."""
        with (self.directory / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists() and self.path.stat().st_size >= self.max_bytes:
                self._rotate()
            prev = self._cached_tail() or self._last_hash()
            entry = {**record, "prev": prev}
            entry["hash"] = _digest(prev, entry)
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                written = os.fstat(fd)
                self._tail = (written.st_ino, written.st_size, entry["hash"])
            finally:
                os.close(fd)

    def _cached_tail(self) -> str | None:
        try:
            current = self.path.stat()
        except FileNotFoundError:
            return None
        if self._tail is not None and self._tail[:2] == (current.st_ino, current.st_size):
            return self._tail[2]
        return None

    def _rotate(self) -> None:
        for n in range(self.keep - 1, 0, -1):
            older = self.directory / f"{LOG_NAME}.{n}"
            if older.exists():
                older.replace(self.directory / f"{LOG_NAME}.{n + 1}")
        self.path.replace(self.directory / f"{LOG_NAME}.1")


def _last_line(path: Path, block: int = 65536) -> bytes:
    """The file's last line, read backwards block by block (records with content can be long)."""
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        data = b""
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            data = handle.read(end - start) + data
            end = start
            if b"\n" in data.rstrip(b"\n"):
                break
        return data.rstrip(b"\n").rsplit(b"\n", 1)[-1]


@dataclass(frozen=True)
class ChainProblem:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def _files_oldest_first(directory: Path) -> list[Path]:
    rotated = sorted(
        directory.glob(f"{LOG_NAME}.*"),
        key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
        reverse=True,
    )
    current = directory / LOG_NAME
    return [*rotated, *([current] if current.exists() else [])]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.rstrip("\n")


def verify_chain(directory: Path) -> list[ChainProblem]:
    """Every break in the chain across rotated files; empty when intact."""
    problems: list[ChainProblem] = []
    prev = None
    for path in _files_oldest_first(directory):
        for number, line in _lines(path):
            try:
                entry = json.loads(line)
                claimed = entry.pop("hash")
            except (ValueError, KeyError, AttributeError):
                problems.append(ChainProblem(path.name, number, "not an audit record"))
                prev = None
                continue
            if prev is not None and entry.get("prev") != prev:
                problems.append(
                    ChainProblem(
                        path.name,
                        number,
                        "does not follow the previous line (a line was "
                        "deleted, inserted or reordered)",
                    )
                )
            if _digest(str(entry.get("prev")), entry) != claimed:
                problems.append(ChainProblem(path.name, number, "edited (hash mismatch)"))
            prev = claimed
    return problems
