"""What a request may ask of a loaded model, without a model: token ids and output length."""

from __future__ import annotations

import pytest

from bastion.engine.base import GenerationParams, SamplingParams
from bastion.engine.llamacpp.budget import check_logit_bias, completion_budget
from bastion.errors import ContextLengthExceededError, InvalidParameterError
from bastion.settings import EngineSettings

DEFAULTS = EngineSettings(default_max_tokens=100, max_tokens_limit=0)


def test_no_max_tokens_takes_the_default_within_the_room_left() -> None:
    assert completion_budget(10, None, 1000, DEFAULTS) == 100
    assert completion_budget(950, None, 1000, DEFAULTS) == 50
    unbounded = EngineSettings(default_max_tokens=0, max_tokens_limit=0)
    assert completion_budget(10, None, 1000, unbounded) == 990
    capped = EngineSettings(default_max_tokens=0, max_tokens_limit=64)
    assert completion_budget(10, None, 1000, capped) == 64


def test_an_explicit_max_tokens_is_kept_when_it_fits() -> None:
    assert completion_budget(10, 500, 1000, DEFAULTS) == 500


@pytest.mark.parametrize(
    ("n_prompt", "max_tokens", "settings", "param"),
    [
        (1000, None, DEFAULTS, "messages"),  # the prompt alone fills the slot
        (1200, 10, DEFAULTS, "messages"),
        (900, 200, DEFAULTS, "max_tokens"),  # prompt + completion past the slot
        (10, 65, EngineSettings(max_tokens_limit=64), "max_tokens"),  # over the hard cap
    ],
)
def test_requests_that_cannot_fit_are_refused_naming_the_parameter(
    n_prompt: int, max_tokens: int | None, settings: EngineSettings, param: str
) -> None:
    with pytest.raises((ContextLengthExceededError, InvalidParameterError)) as info:
        completion_budget(n_prompt, max_tokens, 1000, settings)
    assert info.value.param == param


def test_logit_bias_ids_must_exist_in_the_vocabulary() -> None:
    def params(*ids: int) -> GenerationParams:
        bias = tuple((token, 1.0) for token in ids)
        return GenerationParams(prompt="x", sampling=SamplingParams(logit_bias=bias))

    check_logit_bias(params(0, 49151), 49152)
    for bad in (49152, 10**9):
        with pytest.raises(InvalidParameterError, match=f"token {bad}") as info:
            check_logit_bias(params(5, bad), 49152)
        assert info.value.param == "logit_bias"
