"""Check a model directory against its manifest: every difference named, nothing trusted.

Files are hashed in parallel (hashlib releases the GIL, so threads use every core), in large
reads. Symlinks and special files are refused outright: a manifest vouches for regular files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bastion.integrity.manifest import MANIFEST_NAME, Manifest, hash_file

SIGNATURE_NAME = MANIFEST_NAME + ".minisig"
DEFAULT_IGNORE = frozenset({MANIFEST_NAME, SIGNATURE_NAME})


FileIdentity = tuple[int, int, int, int]
"""(device, inode, size, mtime in ns): a file replaced or rewritten gets a new one."""


def file_identity(path: Path) -> FileIdentity | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass
class Report:
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """Symlinks and special files (devices, sockets, FIFOs)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.mismatched or self.refused)

    def problems(self) -> list[str]:
        return (
            [f"missing: {n}" for n in self.missing]
            + [f"not in the manifest: {n}" for n in self.extra]
            + [f"SHA-256 mismatch: {n}" for n in self.mismatched]
            + [f"symlink or special file refused: {n}" for n in self.refused]
        )


def _walk(directory: Path) -> Iterable[tuple[str, os.stat_result]]:
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            path = Path(root) / name
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode):
                continue
            yield path.relative_to(directory).as_posix(), info


def hash_files(
    paths: list[Path], *, workers: int | None = None, progress: Callable[[int], None] | None = None
) -> list[str]:
    """SHA-256 of each path, in order, hashed concurrently."""
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1))) as pool:
        digests = []
        for path, digest in zip(paths, pool.map(hash_file, paths), strict=True):
            digests.append(digest)
            if progress:
                progress(path.stat().st_size)
        return digests


def verify_directory(
    directory: Path,
    manifest: Manifest,
    *,
    ignore: frozenset[str] = DEFAULT_IGNORE,
    files: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Compare ``directory`` with ``manifest``. With ``files`` (a local model's own directory,
    which may hold other things) only the listed files are checked, there."""
    report = Report()
    if files is None:
        base, present = directory, dict(_walk(directory))
    else:
        base, present = (
            files,
            {
                n: (files / n).lstat()
                for n in manifest.entries
                if (files / n).exists() or (files / n).is_symlink()
            },
        )
    for name, info in sorted(present.items()):
        if files is None and name in ignore:
            continue
        if not stat.S_ISREG(info.st_mode):
            report.refused.append(name)
        elif name not in manifest.entries:
            report.extra.append(name)
    to_hash = []
    for name in sorted(manifest.entries):
        found = present.get(name)
        if found is None:
            report.missing.append(name)
        elif stat.S_ISREG(found.st_mode):
            to_hash.append(name)
    digests = hash_files([base / n for n in to_hash], progress=progress)
    report.mismatched = [
        n for n, d in zip(to_hash, digests, strict=True) if d != manifest.entries[n]
    ]
    return report
