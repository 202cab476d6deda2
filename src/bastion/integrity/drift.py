"""Drift of the Python environment from a lock written by ``bastion integrity freeze``.

The lock holds ``pip freeze --all`` and the SHA-256 of every ``*.pth`` file in site-packages
(``.pth`` files run code at interpreter start, a classic persistence trick).
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bastion.integrity.manifest import hash_file

LOCK_NAME = "env.lock.json"


@dataclass(frozen=True)
class EnvSnapshot:
    packages: tuple[str, ...]
    pth: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"packages": list(self.packages), "pth": self.pth}, indent=1, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> EnvSnapshot:
        data = json.loads(text)
        return cls(tuple(data["packages"]), dict(data["pth"]))


def site_dirs() -> list[Path]:
    return [Path(p) for p in site.getsitepackages()]


def pip_freeze() -> tuple[str, ...]:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return tuple(sorted(line for line in result.stdout.splitlines() if line.strip()))


def snapshot(
    packages: tuple[str, ...] | None = None, dirs: list[Path] | None = None
) -> EnvSnapshot:
    pth = {
        str(p): hash_file(p)
        for d in (dirs if dirs is not None else site_dirs())
        for p in sorted(d.glob("*.pth"))
        if p.is_file()
    }
    return EnvSnapshot(packages if packages is not None else pip_freeze(), pth)


def compare(lock: EnvSnapshot, now: EnvSnapshot) -> list[str]:
    """Every difference, one line each; empty when nothing drifted."""
    problems = [
        f"package added or changed: {p}" for p in now.packages if p not in set(lock.packages)
    ]
    problems += [
        f"package removed or changed: {p}" for p in lock.packages if p not in set(now.packages)
    ]
    for path, digest in sorted(now.pth.items()):
        if path not in lock.pth:
            problems.append(f"new .pth file: {path}")
        elif lock.pth[path] != digest:
            problems.append(f".pth file changed: {path}")
    problems += [f".pth file removed: {path}" for path in sorted(lock.pth) if path not in now.pth]
    return problems


DEPLOYED_NAME = "deployed.json"


def deployed_drift(registry: Path) -> list[str]:
    """Deployed files against their canonical copies, as ``bastion deploy`` registers them
    in ``$BASTION_HOME/integrity/deployed.json``: ``[{"path": ..., "canonical": ...}]``."""
    if not registry.is_file():
        return []
    problems = []
    for entry in json.loads(registry.read_text(encoding="utf-8")):
        deployed, canonical = Path(entry["path"]), Path(entry["canonical"])
        if not deployed.is_file():
            problems.append(f"deployed file missing: {deployed}")
        elif not canonical.is_file():
            problems.append(f"canonical copy missing: {canonical}")
        elif hash_file(deployed) != hash_file(canonical):
            problems.append(f"deployed file differs from its canonical copy: {deployed}")
    return problems
