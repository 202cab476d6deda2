"""Bodies that used to reach a 500 get a 400 on every JSON route: in the OpenAI envelope, with
the request id, audited with their status; client values in log lines are escaped.

One app serves every case (in process, stand-in engine), so the module starts it once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import pytest

from tests.api.stub_app import MODEL, client, running_app

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
MODELS = "/api/models"
USER = {"role": "user", "content": "hi"}


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# name -> (route, raw body, expected param)
CASES: dict[str, tuple[str, str, str | None]] = {
    # lone surrogates, in every kind of text field and in a field name
    "surrogate-chat-content": (
        CHAT,
        '{"messages": [{"role": "user", "content": "\\ud800"}]}',
        "messages[0].content",
    ),
    "surrogate-chat-part": (
        CHAT,
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "a\\udfff"}]}]}',
        "messages[0].content[0].text",
    ),
    "surrogate-chat-second-message": (
        CHAT,
        (
            '{"messages": [{"role": "system", "content": "ok"}, '
            '{"role": "user", "content": "\\udc00"}]}'
        ),
        "messages[1].content",
    ),
    "surrogate-chat-name": (
        CHAT,
        '{"messages": [{"role": "user", "content": "hi", "name": "\\ud83d"}]}',
        "messages[0].name",
    ),
    "surrogate-prompt": (TEXT, '{"prompt": "\\ud800"}', "prompt"),
    "surrogate-prompt-list": (TEXT, '{"prompt": ["\\udbff"]}', "prompt[0]"),
    "surrogate-model": (TEXT, '{"prompt": "hi", "model": "\\ud800"}', "model"),
    "surrogate-stop": (TEXT, '{"prompt": "hi", "stop": ["\\ud800"]}', "stop[0]"),
    "surrogate-user": (CHAT, '{"messages": [], "user": "\\ude00"}', "user"),
    "surrogate-field-name": (TEXT, '{"prompt": "hi", "x\\ud800": 1}', None),
    "surrogate-catalog-entry": (MODELS, '{"name": "\\ud800"}', "name"),
    # nesting far past any real request, at the top and inside fields, on every JSON route
    "deep-chat": (CHAT, deep(10_000), None),
    "deep-chat-field": (CHAT, f'{{"messages": [], "tools": {deep(10_000)}}}', None),
    "deep-text": (TEXT, f'{{"prompt": "hi", "stop": {deep(500)}}}', None),
    "deep-catalog": (MODELS, deep(10_000), None),
    "deep-catalog-field": (MODELS, f'{{"name": "x", "url": {deep(200)}}}', None),
    # integer literals past int()'s 4,300 digit limit, in several numeric fields
    "long-max-tokens": (TEXT, '{"prompt": "hi", "max_tokens": ' + "1" * 4301 + "}", "max_tokens"),
    "long-seed": (CHAT, '{"messages": [], "seed": -' + "9" * 5000 + "}", "seed"),
    "long-top-k": (TEXT, '{"prompt": "hi", "top_k": ' + "7" * 10_000 + "}", "top_k"),
    "long-logprobs": (TEXT, '{"prompt": "hi", "logprobs": ' + "2" * 4400 + "}", "logprobs"),
    "long-top-logprobs": (
        CHAT,
        '{"messages": [], "top_logprobs": ' + "3" * 4400 + "}",
        "top_logprobs",
    ),
    "long-catalog-ctx": (MODELS, '{"name": "x", "ctx": ' + "4" * 4400 + "}", "ctx"),
}


@dataclass
class Served:
    responses: dict[str, Any]
    audit: dict[str, dict[str, Any]]
    log_lines: list[str]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("bastion.access", "bastion.api")):  # where requests log
            self.lines.append(record.getMessage())


HOSTILE_FIELDS = ["a\nINFO forged", "b\r", "c\x1b[31m", "d\x00", "e\u2028f", "g\u2029", "h\x85"]
HOSTILE_PATHS = ["/v1/x%0AINFO%20forged", "/v1/x%0D", "/v1/x%1B[2J", "/v1/x%00", "/v1/x%E2%80%A8"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    home = tmp_path_factory.mktemp("bad-bodies") / "home"
    handler = Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with running_app(home) as app, client(app, "127.0.0.1") as http:
            for name, (route, body, _) in CASES.items():
                out[name] = await http.post(route, content=body.encode())
            extra = dict.fromkeys(HOSTILE_FIELDS, 1)
            chat = {"model": MODEL, "messages": [USER], "max_tokens": 2, **extra}
            out["hostile-fields"] = await http.post(CHAT, json=chat)
            for path in HOSTILE_PATHS:
                out[path] = await http.get(path)
        return out

    try:
        responses = asyncio.run(scenario())
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = (
        line for path in (home / "audit").glob("*.jsonl") for line in path.read_text().splitlines()
    )
    records = [json.loads(line) for line in lines if line.strip()]
    audit = {r["request_id"]: r for r in records if r.get("request_id")}
    return Served(responses, audit, handler.lines)


@pytest.mark.parametrize("case", CASES)
def test_each_bad_body_is_a_400_in_the_envelope_with_the_request_id(
    served: Served, case: str
) -> None:
    response = served.responses[case]
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == CASES[case][2]
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_")
    assert served.audit[request_id]["status"] == 400


def test_error_messages_do_not_echo_the_offending_text(served: Served) -> None:
    for case in CASES:
        message = served.responses[case].json()["error"]["message"]
        assert message.isprintable()  # no surrogate, no control character
        assert not re.search(r"\d{50}", message)
        assert len(message) < 200


def test_unsupported_field_names_are_logged_escaped(served: Served) -> None:
    assert served.responses["hostile-fields"].status_code == 200
    (line,) = [line for line in served.log_lines if line.startswith("ignoring unsupported")]
    for shown in ("a\\nINFO\\x20forged", "b\\r", "c\\x1b[31m", "d\\x00", "e\\u2028f", "g\\u2029"):
        assert shown in line
    assert "h\\x85" in line


def test_no_request_log_line_carries_a_raw_control_or_separator(served: Served) -> None:
    access = [line for line in served.log_lines if line.startswith("GET /v1/x")]
    assert len(access) == len(HOSTILE_PATHS)
    for line in served.log_lines:
        first = line.split("\n", 1)[0]  # a traceback would follow a newline: there is none
        assert first == line, line
        assert line.isprintable(), line
