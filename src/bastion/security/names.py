"""One rule for every operator-supplied name that becomes a file or directory name.

Client certificates live at ``tls/clients/<name>.crt`` and models at ``models/<name>/``. A name
is accepted only if it is one plain path component that every filesystem spells one way, so
``../ca`` cannot reach the CA, ``..`` cannot reach ``BASTION_HOME``'s parent, and two names can
never share a file: lowercase ASCII letters, digits, ``.``, ``_`` and ``-``; starting with a
letter or digit; not ending with ``.`` (Windows drops it); at most 64 characters; not a device
name (``con``, ``nul``, ...) nor a name the caller reserves. Lowercase only because ``Alice`` and
``alice`` are one file on case-insensitive filesystems (macOS, Windows, some network shares).

>>> check_name("alice", kind="certificate")
'alice'
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

from bastion.errors import InvalidNameError

MAX_LENGTH = 64
NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9_-])?$"
RULE = (
    "1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit "
    "and not ending with '.'"
)
# Device names that Windows maps to a device whatever the extension (``nul.crt`` is NUL).
DEVICE_NAMES = frozenset(
    {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
)
_NAME = re.compile(NAME_PATTERN)


def _shown(name: str) -> str:
    """The name as an escaped literal (no control characters reach a terminal or log)."""
    return ascii(name if len(name) <= 40 else name[:40] + "...")


def check_name(name: str, *, kind: str, reserved: Collection[str] = ()) -> str:
    """``name`` if it is safe to use as a file or directory name, else ``InvalidNameError``
    saying what is wrong with it."""
    problem = _problem(name, reserved)
    if problem is not None:
        raise InvalidNameError(f"invalid {kind} name {_shown(name)}: {problem}", param="name")
    return name


def _problem(name: str, reserved: Collection[str]) -> str | None:
    if not name:
        return "it is empty; use " + RULE
    if len(name) > MAX_LENGTH:
        return f"it is {len(name)} characters long; at most {MAX_LENGTH}"
    if any(sep in name for sep in ("/", "\\", "\0")):
        return "it must be a single name, not a path ('/' and '\\' are not allowed)"
    if set(name) == {"."}:
        return "'.' and '..' are directories, not names"
    if not name.isascii():
        return "only ASCII letters are allowed (other scripts have look-alike letters)"
    if not _NAME.fullmatch(name):
        if _NAME.fullmatch(name.lower()):
            return (
                "use lowercase: names that differ only in case share one file on "
                "case-insensitive filesystems"
            )
        return "use " + RULE
    if name.split(".", 1)[0] in DEVICE_NAMES:
        return "it is a reserved device name on Windows"
    if name in reserved:
        return f"it is reserved (reserved: {', '.join(sorted(reserved))})"
    return None


def name_path(
    directory: Path, name: str, *, kind: str, suffix: str = "", reserved: Collection[str] = ()
) -> Path:
    """``directory/<name><suffix>`` for a checked ``name``; refused as well if that path
    resolves anywhere but to itself (a symlink placed there could point at another file)."""
    path = directory / (check_name(name, kind=kind, reserved=reserved) + suffix)
    resolved = path.resolve()
    if resolved.parent != directory.resolve() or resolved.name != path.name:
        raise InvalidNameError(
            f"invalid {kind} name {_shown(name)}: {path} resolves to {resolved}, "
            "not to a file of its own in that directory",
            param="name",
        )
    return path
