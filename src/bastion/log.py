"""Logging setup: every record carries the id of the request it belongs to.

Anything a client sent (a path, a header value, a field name) goes through ``escape`` before
it reaches a log line, so it can neither forge a line, nor move the terminal's cursor, nor
hide text.
"""

from __future__ import annotations

import contextvars
import logging

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

ESCAPE_LIMIT = 256
"""Characters of one client value kept in a log line; the rest are counted."""
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", " ": "\\x20"}


def escape(value: str | bytes, *, limit: int = ESCAPE_LIMIT, spaces: bool = False) -> str:
    """``value`` (sent by a client) as one printable token for a log line.

    Backslash, space (unless ``spaces``: for prose such as an exception message) and every
    character that is not printable (control characters such as NUL, CR, LF and ESC; line
    and paragraph separators; format characters such as bidi overrides; surrogates;
    unassigned code points) become ``\\n``/``\\xNN``/``\\uNNNN`` escapes. Bytes that are not
    UTF-8 become ``\\xNN``. Past ``limit`` characters the value is cut and the rest counted.
    """
    raw = isinstance(value, bytes)
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if not (
        text.isascii() and text.isprintable() and (spaces or " " not in text) and "\\" not in text
    ):
        text = "".join(
            " " if spaces and char == " " else _escape_char(char, raw=raw) for char in text
        )
    return f"{text}...(+{cut} chars)" if cut > 0 else text


def _escape_char(char: str, *, raw: bool) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if char.isprintable():
        return char
    code = ord(char)
    if raw and 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # The engine thread has no request context; it passes the id with ``extra``.
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # bastion logs its own access lines
