"""Wire schemas: bounds on every parameter, conversion to GenerationParams."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.api.errors import from_validation_error
from bastion.api.schemas import ChatCompletionRequest, CompletionRequest
from bastion.engine.base import SamplingParams
from bastion.errors import BastionError, InvalidParameterError

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": MESSAGES, **fields})


def refused(**fields: Any) -> BastionError:
    """The error a client gets for these fields (validated as the route does)."""
    try:
        chat(**fields)
    except ValidationError as exc:
        return from_validation_error(exc)
    except BastionError as exc:
        return exc
    raise AssertionError(f"accepted {fields}")


def test_every_sampling_parameter_reaches_the_engine() -> None:
    params = chat(
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        frequency_penalty=0.2,
        presence_penalty=-0.3,
        seed=7,
        max_tokens=12,
        stop="END",
    ).to_generation_params()
    assert params.sampling == SamplingParams(0.5, 0.9, 40, 0.05, 1.1, 0.2, -0.3, 7)
    assert params.max_tokens == 12
    assert params.stop == ("END",)
    assert params.logprobs is None


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=5, max_completion_tokens=9).to_generation_params().max_tokens == 9


def test_logprobs_and_top_logprobs() -> None:
    assert chat(logprobs=True).to_generation_params().logprobs == 0
    assert chat(logprobs=True, top_logprobs=3).to_generation_params().logprobs == 3
    assert refused(top_logprobs=3).param == "top_logprobs"


def test_text_content_parts_are_joined_and_images_refused() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    request = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": parts}]}
    )
    assert request.to_generation_params().messages[0].content == "ab"  # type: ignore[index]
    image = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        }
    )
    with pytest.raises(InvalidParameterError) as info:
        image.to_generation_params()
    assert info.value.param == "messages[0].content"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"min_p": -0.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"seed": "abc"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_completion_tokens": True}, "max_completion_tokens"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"stop": 5}, "stop"),
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"tools": [{"type": "function"}]}, "tools"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(
    fields: dict[str, Any], param: str
) -> None:
    error = refused(**fields)
    assert error.status == 400
    assert error.param == param
    assert param.split("[", maxsplit=1)[0] in error.message


def test_nan_sent_as_a_json_literal_is_refused_by_name() -> None:
    data = json.loads('{"messages": [{"role": "user", "content": "x"}], "top_p": NaN}')
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(data)
    assert from_validation_error(info.value).param == "top_p"


def test_completion_defaults_to_sixteen_tokens_like_openai() -> None:
    request = CompletionRequest.model_validate({"prompt": "Once"})
    params = request.to_generation_params()
    assert params.max_tokens == 16
    assert params.prompt == "Once"


def test_completion_logprobs_bound() -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": "x", "logprobs": 6})


def test_unknown_fields_are_kept_for_logging_not_refused() -> None:
    assert chat(frobnicate=1).extra_fields() == ["frobnicate"]


def test_logit_bias_reaches_the_sampler_as_token_ids() -> None:
    sampling = chat(logit_bias={"42": 100, "7": -100, "0": 0.5}).to_generation_params().sampling
    assert sampling.logit_bias == ((42, 100.0), (7, -100.0), (0, 0.5))
    text = CompletionRequest.model_validate({"prompt": "x", "logit_bias": {"9": -1}})
    assert text.to_generation_params().sampling.logit_bias == ((9, -1.0),)
    assert chat().to_generation_params().sampling.logit_bias == ()


@pytest.mark.parametrize(
    "bias",
    [
        {"1": 100.5},
        {"1": -101},
        {"1": math.inf},
        {"1": "5"},
        {"one": 1},
        {"-1": 1},
        {"1.0": 1},
        {"01": 1},
        {" 1": 1},
        {"99999999999": 1},
        {str(i): 1 for i in range(301)},
        [[1, 1]],
    ],
)
def test_bad_logit_bias_is_refused_naming_logit_bias(bias: Any) -> None:
    error = refused(logit_bias=bias)
    assert (error.status, error.param) == (400, "logit_bias")


def test_logit_bias_takes_three_hundred_entries() -> None:
    bias = {str(i): -1 for i in range(300)}
    assert len(chat(logit_bias=bias).to_generation_params().sampling.logit_bias) == 300


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("functions", [{"name": "f", "parameters": {}}]),
        ("functions", []),
        ("function_call", "auto"),
        ("function_call", "none"),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "auto"),
        ("tool_choice", "required"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("parallel_tool_calls", True),
        ("parallel_tool_calls", False),
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("modalities", ["audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("reasoning_effort", "low"),
        ("verbosity", "low"),
        ("store", True),
    ],
)
def test_unsupported_openai_parameters_are_refused_by_name(name: str, value: Any) -> None:
    for request in (
        lambda: chat(**{name: value}),
        lambda: CompletionRequest.model_validate({"prompt": "x", name: value}),
    ):
        with pytest.raises(InvalidParameterError) as info:
            request()
        assert (info.value.status, info.value.param) == (400, name)
        assert name in info.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("user", "alice"),
        ("metadata", {"team": "a"}),
        ("store", False),
        ("store", None),
        ("tools", []),
        ("tools", None),
        ("tool_choice", "none"),
        ("response_format", {"type": "text"}),
        ("modalities", ["text"]),
        ("service_tier", "auto"),
        ("prompt_cache_key", "k"),
        ("safety_identifier", "s"),
        ("functions", None),
    ],
)
def test_harmless_parameters_are_accepted(name: str, value: Any) -> None:
    assert chat(**{name: value}).to_generation_params().messages is not None


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"suffix": "tail"}, "suffix"), ({"best_of": 2}, "best_of"), ({"n": 3}, "n")],
)
def test_completion_only_features_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises((InvalidParameterError, ValidationError)) as info:
        CompletionRequest.model_validate({"prompt": "x", **fields})
    error = info.value
    if isinstance(error, ValidationError):
        error = from_validation_error(error)
    assert (error.status, error.param) == (400, param)
