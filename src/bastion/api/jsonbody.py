"""Parse a JSON request body into a dict, refusing what would crash or mislead later code.

Every JSON route parses its body here, so the shapes that used to reach a 500 are refused at
the edge with a 400: nesting deeper than ``MAX_DEPTH`` (the C decoder recurses and raised
``RecursionError`` at about 1,000 levels; later code such as the catalog's YAML writer recurses
too), integer literals longer than ``MAX_INT_DIGITS`` (``int()`` refuses over 4,300 digits, and
no field takes more than 20), and lone surrogates (``"\\ud800"`` is valid JSON but not Unicode:
encoding it for the engine, the audit log or a response raised ``UnicodeEncodeError``).
"""

from __future__ import annotations

import array
import itertools
import json
import re
from collections.abc import Iterable
from typing import Any

from bastion.api.errors import param_path
from bastion.errors import InvalidParameterError, InvalidRequestError, MalformedJSONError

MAX_DEPTH = 128
"""Arrays and objects nested deeper than this are refused (serde_json's default limit)."""
MAX_INT_DIGITS = 100
"""Integer literals with more digits are refused; the widest field (``seed``) takes 20."""

# A string literal; an unterminated one runs to the end. Every quote starts a match that
# cannot fail, so there is no backtracking (quadratic on unterminated strings full of \").
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE = re.compile("[\ud800-\udfff]")

_Path = tuple["_Path", int | str] | None
"""Where a value sits: ``(parent's path, key or index)``; ``None`` is the body itself."""


class _OversizedInt:
    """Stands in for an integer literal too long to convert, until its field is known."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(literal: str) -> int | _OversizedInt:
    digits = len(literal) - literal.startswith("-")
    return _OversizedInt(digits) if digits > MAX_INT_DIGITS else int(literal)


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in ``raw`` nest more than ``limit`` levels (brackets inside
    strings do not count). Linear and in C (regex, translate, accumulate): it runs before the
    recursive decoder ever sees the body."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    steps = array.array("b", _STRING.sub(b"", raw).translate(_BRACKET_STEP, _NOT_BRACKET))
    return max(itertools.accumulate(steps), default=0) > limit


def parse_json_object(raw: bytes, *, what: str = "a JSON object") -> dict[str, Any]:
    """``raw`` as a dict, or a 400 (``InvalidRequestError`` family) saying what is wrong."""
    if too_deep(raw):
        raise InvalidRequestError(
            f"The request body nests arrays and objects more than {MAX_DEPTH} levels deep."
        )
    try:
        # UTF-8 only (RFC 8259). NaN and Infinity literals are accepted here so that
        # validation refuses them by name.
        data: Any = json.loads(raw.decode("utf-8"), parse_int=_parse_int)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError included
        raise MalformedJSONError("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"The request body must be {what}.")
    _check_values(data)
    return data


def _check_values(data: dict[str, Any]) -> None:
    """Refuse lone surrogates (in keys or strings) and oversized integers, naming the field.

    Iterative, and only containers are queued, each with a link to its parent rather than a
    copy of its path: a wide array deep in a body costs no more than the array itself.
    """
    stack: list[tuple[dict[str, Any] | list[Any], _Path]] = [(data, None)]
    while stack:
        container, path = stack.pop()
        if isinstance(container, dict):
            if any(_has_surrogate(key) for key in container):
                raise _invalid(path, "a field name is not valid Unicode (a lone surrogate)")
            items: Iterable[tuple[int | str, Any]] = container.items()
        else:
            items = enumerate(container)
        for key, value in items:
            if isinstance(value, dict | list):
                stack.append((value, (path, key)))
            elif isinstance(value, str):
                if _has_surrogate(value):
                    raise _invalid((path, key), "the text is not valid Unicode (a lone surrogate)")
            elif isinstance(value, _OversizedInt):
                raise _invalid(
                    (path, key),
                    f"an integer of {value.digits} digits is too long "
                    f"(the limit is {MAX_INT_DIGITS})",
                )


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def _invalid(path: _Path, problem: str) -> InvalidRequestError:
    loc: list[int | str] = []
    while path is not None:
        path, key = path
        loc.append(key)
    param = param_path(tuple(reversed(loc)))
    if param:
        return InvalidParameterError(f"Invalid value for '{param}': {problem}.", param=param)
    return InvalidRequestError(f"The request body is invalid: {problem}.")
