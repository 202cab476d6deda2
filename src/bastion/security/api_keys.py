"""API keys: shown once at creation, stored only as SHA-256 hashes (``keys/api-keys.json``,
0600), compared in constant time against every stored hash.

Each key carries scopes: ``inference`` (the OpenAI routes; the default) and ``admin``
(``/api/*``, ``/metrics``). Key files written before scopes existed hold keys without a
``scopes`` field; those keys are ``inference`` only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bastion.settings import ensure_dir

KEY_PREFIX = "bst_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
INFERENCE = "inference"
ADMIN = "admin"
SCOPES = (INFERENCE, ADMIN)
DEFAULT_SCOPES = frozenset({INFERENCE})
ALL_SCOPES = frozenset(SCOPES)


class KeyStoreError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    created: str
    revoked: bool = False
    scopes: frozenset[str] = DEFAULT_SCOPES

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ApiKey:
        """A stored key; no ``scopes`` (written before scopes existed) means inference only.
        Unknown scope names are dropped, so a hand-edited file can only narrow a key."""
        raw = record.get("scopes")
        scopes = DEFAULT_SCOPES if raw is None else frozenset(raw) & ALL_SCOPES
        return cls(
            str(record["name"]),
            str(record["sha256"]),
            str(record["created"]),
            bool(record.get("revoked", False)),
            scopes,
        )

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "created": self.created,
            "revoked": self.revoked,
            "scopes": sorted(self.scopes),
        }


def parse_scopes(values: Iterable[str]) -> frozenset[str]:
    """``["admin"]``, ``["inference,admin"]`` or repeated values -> a set of known scopes."""
    scopes = {part.strip().lower() for value in values for part in value.split(",")}
    scopes.discard("")
    unknown = sorted(scopes - ALL_SCOPES)
    if unknown:
        raise KeyStoreError(
            f"unknown scope {', '.join(map(repr, unknown))}; scopes are {', '.join(SCOPES)}"
        )
    if not scopes:
        raise KeyStoreError(f"give at least one scope ({', '.join(SCOPES)})")
    return frozenset(scopes)


def _hash(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


class KeyStore:
    def __init__(self, home: Path) -> None:
        self.path = home / "keys" / "api-keys.json"
        self._cache: tuple[float, list[ApiKey]] | None = None

    def all(self) -> list[ApiKey]:
        """All keys; re-read only when the file changed (cheap enough per request)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        if self._cache is None or self._cache[0] != mtime:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self._cache = (mtime, [ApiKey.from_record(k) for k in data.get("keys", [])])
        return self._cache[1]

    def active(self) -> list[ApiKey]:
        return [k for k in self.all() if not k.revoked]

    def create(self, name: str, scopes: frozenset[str] = DEFAULT_SCOPES) -> str:
        """A new key (256 random bits) with ``scopes``; only its hash is stored. Returns the
        key, once."""
        if not re.match(NAME_PATTERN, name):
            raise KeyStoreError("a key name is 1-64 letters, digits, '.', '_' or '-'")
        if not scopes or not scopes <= ALL_SCOPES:
            raise KeyStoreError(f"scopes are {', '.join(SCOPES)}")
        keys = self.all()
        if any(k.name == name and not k.revoked for k in keys):
            raise KeyStoreError(f"a key named '{name}' already exists; revoke it first")
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        now = dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds")
        self._write([*keys, ApiKey(name, _hash(token.encode()), now, scopes=scopes)])
        return token

    def revoke(self, name: str) -> None:
        keys = self.all()
        if not any(k.name == name and not k.revoked for k in keys):
            raise KeyStoreError(f"no active key named '{name}'")
        self._write([dataclasses.replace(k, revoked=True) if k.name == name else k for k in keys])

    def identify(self, token: bytes) -> ApiKey | None:
        """The active key matching ``token``. Every stored hash is compared, in constant
        time, whether or not an earlier one matched."""
        digest = _hash(token).encode()
        found = None
        for key in self.active():
            if hmac.compare_digest(digest, key.sha256.encode()):
                found = key
        return found

    def _write(self, keys: list[ApiKey]) -> None:
        ensure_dir(self.path.parent)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".api-keys-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"keys": [k.record() for k in keys]}, handle, indent=1)
            Path(tmp).replace(self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._cache = None
