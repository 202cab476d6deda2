"""Client-sent values are escaped before they reach a log line."""

from __future__ import annotations

import logging

import pytest

from bastion.log import ESCAPE_LIMIT, escape

# Each one, written raw to a log, would start a line, move the cursor or hide text.
HOSTILE = {
    "newline": ("a\nb", "a\\nb"),
    "carriage-return": ("a\rb", "a\\rb"),
    "crlf-forged-line": ("/x\r\n2026 INFO forged", "/x\\r\\n2026\\x20INFO\\x20forged"),
    "ansi-escape": ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    "nul": ("a\x00b", "a\\x00b"),
    "tab": ("a\tb", "a\\tb"),
    "delete": ("a\x7fb", "a\\x7fb"),
    "next-line-c1": ("a\x85b", "a\\x85b"),
    "csi-c1": ("a\x9b31mb", "a\\x9b31mb"),
    "line-separator": ("a\u2028b", "a\\u2028b"),
    "paragraph-separator": ("a\u2029b", "a\\u2029b"),
    "bidi-override": ("a\u202eb", "a\\u202eb"),
    "zero-width-space": ("a\u200bb", "a\\u200bb"),
    "lone-surrogate": ("a\ud800b", "a\\ud800b"),
    "vertical-tab-form-feed": ("a\x0b\x0cb", "a\\x0b\\x0cb"),
}


@pytest.mark.parametrize(("raw", "shown"), HOSTILE.values(), ids=HOSTILE.keys())
def test_characters_that_could_forge_or_hide_log_text_are_escaped(raw: str, shown: str) -> None:
    escaped = escape(raw)
    assert escaped == shown
    assert escaped.isascii()
    assert escaped.isprintable()


def test_ordinary_values_are_unchanged() -> None:
    for value in ("/v1/chat/completions", "trace-abc.123", "héllo", "模型", "😀"):
        assert escape(value) == value


def test_a_backslash_cannot_pass_for_an_escape() -> None:
    # Otherwise a client could write a literal "\n" that reads like an escaped newline.
    assert escape("a\\nb") == "a\\\\nb"
    assert escape("a\\nb") != escape("a\nb")


def test_spaces_are_escaped_in_tokens_and_kept_in_prose() -> None:
    assert escape("/a 200 1ms") == "/a\\x20200\\x201ms"
    assert escape("bad value\n", spaces=True) == "bad value\\n"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"abc", "abc"),
        (b"caf\xc3\xa9", "café"),
        (b"a\xffb", "a\\xffb"),
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),  # an encoded surrogate is not UTF-8
        (b"a\r\nb", "a\\r\\nb"),
        (b"\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ],
)
def test_header_bytes_are_decoded_as_utf8_and_the_rest_shown_as_hex(raw: bytes, shown: str) -> None:
    assert escape(raw) == shown


def test_long_values_are_cut_and_counted() -> None:
    escaped = escape("x" * (ESCAPE_LIMIT + 10))
    assert escaped == "x" * ESCAPE_LIMIT + "...(+10 chars)"
    assert escape("\n" * 10, limit=4) == "\\n" * 4 + "...(+6 chars)"


def test_an_escaped_value_stays_on_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("bastion.test").info("path %s", escape("/a%0A\n\rINFO forged\x1b[2K"))
    assert len(caplog.records) == 1
    assert "\n" not in caplog.text.rstrip("\n")
    assert "\x1b" not in caplog.text
