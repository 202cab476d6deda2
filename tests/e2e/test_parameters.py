"""OpenAI parameters through the official openai SDK: logit_bias changes the answer, and what
bastion does not implement is refused by name instead of silently ignored."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
PROMPT = "Once upon a time"


def test_logit_bias_forces_a_token(client: OpenAI) -> None:
    # In SmolLM2's vocabulary token 41 is "9": +100 makes every greedy token that one.
    forced = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a fruit."}],
        temperature=0,
        max_tokens=3,
        logit_bias={"41": 100},
    )
    assert forced.choices[0].message.content == "999"
    text = client.completions.create(
        model=MODEL, prompt=PROMPT, temperature=0, max_tokens=3, logit_bias={"41": 100}
    )
    assert text.choices[0].text == "999"


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("logit_bias", {"logit_bias": {"999999999": 1}}),
        ("logit_bias", {"logit_bias": {"41": 500}}),
        ("functions", {"functions": [{"name": "f", "parameters": {"type": "object"}}]}),
        ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
        ("response_format", {"response_format": {"type": "json_object"}}),
    ],
)
def test_unsupported_parameters_are_refused_by_name(
    client: OpenAI, param: str, extra: dict[str, object]
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            **extra,  # type: ignore[arg-type]
        )
    assert info.value.status_code == 400
    assert info.value.param == param


def test_unknown_routes_are_a_404_in_the_openai_envelope(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=MODEL, input="hi")
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "not_found"
