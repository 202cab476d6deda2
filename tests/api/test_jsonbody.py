"""Request bodies: shapes that used to crash later code are refused at parse time, by field."""

from __future__ import annotations

import json
import math

import pytest

from bastion.api.jsonbody import MAX_DEPTH, MAX_INT_DIGITS, parse_json_object, too_deep
from bastion.errors import InvalidParameterError, InvalidRequestError, MalformedJSONError


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def test_an_ordinary_body_parses() -> None:
    body = {"messages": [{"role": "user", "content": "héllo 😀"}], "seed": 2**64 - 1}
    assert parse_json_object(json.dumps(body).encode()) == body


@pytest.mark.parametrize(
    "raw",
    [
        nested(MAX_DEPTH + 1).encode(),
        ('{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)).encode(),
        ('{"tools": ' + nested(10_000) + "}").encode(),
        ('{"a": [' + '{"b": [' * 80 + "]}" * 80 + "]}").encode(),  # arrays and objects mixed
        ('{"a": ' + "[" * 10_000 + "}").encode(),  # deep and unbalanced
    ],
    ids=["arrays", "objects", "in-a-field", "mixed", "unbalanced"],
)
def test_deep_nesting_is_refused_before_decoding(raw: bytes) -> None:
    assert too_deep(raw)
    with pytest.raises(InvalidRequestError, match="levels deep") as caught:
        parse_json_object(raw)
    assert caught.value.status == 400


def test_nesting_up_to_the_limit_is_accepted() -> None:
    inner = nested(MAX_DEPTH - 1)
    assert parse_json_object(f'{{"a": {inner}}}'.encode())["a"]


@pytest.mark.parametrize(
    "text",
    ["[" * 10_000, "{" * 5_000 + "[" * 5_000, '\\"' + "[" * 10_000],
    ids=["brackets", "braces", "after-an-escaped-quote"],
)
def test_brackets_inside_strings_do_not_count(text: str) -> None:
    raw = json.dumps({"content": text, "list": [[1], {"x": [2]}]}).encode()
    assert not too_deep(raw)
    assert parse_json_object(raw)["content"] == text


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 200 + b'"' + b'\\"' * 200_000,  # unterminated, full of escaped quotes
        b"[" * 200 + b'"' + b'\\"' * 200_000 + b"\\",  # ... ending in a lone backslash
        b"[" * 200 + b'"\\' * 200_000,
    ],
    ids=["escaped-quotes", "trailing-backslash", "quote-backslash"],
)
def test_unterminated_strings_are_scanned_once(raw: bytes) -> None:
    # A backtracking scan would restart at every quote: hours for these bodies, not a moment.
    assert too_deep(raw)
    with pytest.raises(InvalidRequestError, match="levels deep"):
        parse_json_object(raw)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"prompt": "\\ud800"}', "prompt"),
        ('{"prompt": ["ok", "x\\udfff"]}', "prompt[1]"),
        ('{"messages": [{"role": "user", "content": "hi \\udc00"}]}', "messages[0].content"),
        (
            '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}',
            "messages[0].content[0].text",
        ),
        ('{"model": "\\ud800x"}', "model"),
        ('{"stop": ["a", "\\udbff"]}', "stop[1]"),
        ('{"user": "\\ude00\\ud800"}', "user"),  # a pair in the wrong order is two lone halves
        ('{"messages": [{"role": "user", "\\ud800": 1}]}', "messages[0]"),  # in a field name
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(body: str, param: str) -> None:
    with pytest.raises(InvalidParameterError, match="lone surrogate") as caught:
        parse_json_object(body.encode())
    assert caught.value.param == param
    assert caught.value.status == 400


def test_a_lone_surrogate_in_a_top_level_field_name_has_no_param() -> None:
    with pytest.raises(InvalidRequestError, match="field name") as caught:
        parse_json_object(b'{"\\ud800": 1}')
    assert caught.value.param is None


def test_a_surrogate_pair_is_one_character_and_accepted() -> None:
    assert parse_json_object(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "😀"}


@pytest.mark.parametrize(
    ("field", "literal", "param"),
    [
        ("max_tokens", "1" * 4301, "max_tokens"),
        ("seed", "-" + "9" * 5000, "seed"),
        ("top_k", "7" * (MAX_INT_DIGITS + 1), "top_k"),
        ("n", "[1, " + "2" * 100_000 + "]", "n[1]"),
        ("ctx", '{"deep": ' + "3" * 4400 + "}", "ctx.deep"),
    ],
)
def test_overlong_integers_are_refused_naming_the_field(
    field: str, literal: str, param: str
) -> None:
    with pytest.raises(InvalidParameterError, match="digits") as caught:
        parse_json_object(f'{{"{field}": {literal}}}'.encode())
    assert caught.value.param == param


def test_integers_up_to_the_digit_limit_are_numbers() -> None:
    big = "9" * MAX_INT_DIGITS
    assert parse_json_object(f'{{"seed": -{big}}}'.encode()) == {"seed": -int(big)}


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe garbage", b'{"prompt": "\xed\xa0\x80"}', b"{", b'{"a": 1,}', "\ufeff{}".encode()],
    ids=["binary", "encoded-surrogate", "truncated", "trailing-comma", "bom"],
)
def test_bodies_that_are_not_json_in_utf8_are_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedJSONError):
        parse_json_object(raw)


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"1", b"null"])
def test_the_body_must_be_an_object(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="must be a JSON object"):
        parse_json_object(raw)


def test_nan_literals_reach_validation_to_be_refused_by_name() -> None:
    assert math.isnan(parse_json_object(b'{"temperature": NaN}')["temperature"])
