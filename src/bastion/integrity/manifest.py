"""``CHECKSUMS.sha256`` manifests in GNU coreutils format.

A line is ``<64 hex>  <name>`` (two spaces, or `` *`` for binary mode). Names containing a
backslash, newline or carriage return are escaped as coreutils does: the line starts with a
backslash and the name uses ``\\\\``, ``\\n`` and ``\\r``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MANIFEST_NAME = "CHECKSUMS.sha256"
_READ_SIZE = 4 * 1024 * 1024
_LINE = re.compile(r"^(?P<esc>\\?)(?P<hex>[0-9a-fA-F]{64}) (?P<mode>[ *])(?P<name>.+)$")


class ManifestError(ValueError):
    """The manifest is malformed or names an unsafe path."""


@dataclass(frozen=True)
class Manifest:
    """File name (relative, POSIX) -> lowercase SHA-256 hex."""

    entries: Mapping[str, str]

    def root_digest(self) -> str:
        """One digest for the whole model: SHA-256 over the canonical manifest text."""
        return hashlib.sha256(render(self.entries).encode("utf-8")).hexdigest()


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_READ_SIZE):
            digest.update(block)
    return digest.hexdigest()


def _escape(name: str) -> tuple[str, bool]:
    if not any(c in name for c in "\\\n\r"):
        return name, False
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r"), True


def _unescape(name: str, lineno: int) -> str:
    out: list[str] = []
    chars = iter(name)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        nxt = next(chars, "")
        mapped = {"\\": "\\", "n": "\n", "r": "\r"}.get(nxt)
        if mapped is None:
            raise ManifestError(f"line {lineno}: bad escape sequence in file name")
        out.append(mapped)
    return "".join(out)


def check_name(name: str) -> str:
    """Reject absolute paths, ``..`` components and NUL before anything is hashed."""
    if not name or "\x00" in name:
        raise ManifestError("file name is empty or contains NUL")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", "") for part in name.split("/")):
        raise ManifestError(f"unsafe file name {name!r}")
    return name


def render(entries: Mapping[str, str]) -> str:
    lines = []
    for name in sorted(entries):
        escaped, needs = _escape(check_name(name))
        prefix = "\\" if needs else ""
        lines.append(f"{prefix}{entries[name].lower()}  {escaped}\n")
    return "".join(lines)


def parse(text: str) -> Manifest:
    entries: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ManifestError(f"line {lineno}: expected '<sha256>  <name>'")
        name = match["name"]
        if match["esc"]:
            name = _unescape(name, lineno)
        check_name(name)
        if name in entries:
            raise ManifestError(f"line {lineno}: {name!r} listed twice")
        entries[name] = match["hex"].lower()
    return Manifest(entries)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ManifestError(f"{MANIFEST_NAME} is missing in {directory}") from exc
    return parse(text)


def write_manifest(directory: Path, names: Iterable[str]) -> Manifest:
    """Hash ``names`` inside ``directory`` and write the manifest next to them (0600)."""
    entries = {name: hash_file(directory / name) for name in names}
    path = directory / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render(entries), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    return Manifest(entries)
