"""Wire schemas for the OpenAI-compatible endpoints.

Validation happens here once, with bounds on every numeric field; ``to_generation_params``
turns a request into the frozen dataclasses the engine uses. Unknown fields are accepted (the
SDKs send many) and logged by the route; OpenAI parameters this server does not implement are
refused by name (``REFUSED``) rather than silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.engine.base import ChatMessage, GenerationParams, SamplingParams
from bastion.errors import InvalidParameterError

MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 256
MAX_MESSAGES = 4096
MAX_LOGIT_BIAS = 300
"""OpenAI's own limit on logit_bias entries."""
_TOKEN_ID = re.compile(r"0|[1-9][0-9]{0,9}")

_STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
TokenCount = Annotated[int, Field(ge=1, le=1_048_576)]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


def _unset(value: Any) -> bool:
    return value is None


def _no_tools(value: Any) -> bool:
    return value is None or value == []


def _text_only(value: Any) -> bool:
    return value is None or value == ["text"]


def _text_format(value: Any) -> bool:
    return value is None or value == {"type": "text"}


def _no_tool_choice(value: Any) -> bool:
    return value is None or value == "none"


def _not_stored(value: Any) -> bool:
    return value is None or value is False


REFUSED: Mapping[str, tuple[Callable[[Any], bool], str]] = MappingProxyType(
    {
        # name -> (values that ask for nothing this server lacks, why others are refused)
        "functions": (_unset, "function calling is not supported"),
        "function_call": (_unset, "function calling is not supported"),
        "tools": (_no_tools, "tool calling is not supported"),
        "tool_choice": (_no_tool_choice, "tool calling is not supported"),
        "parallel_tool_calls": (_unset, "tool calling is not supported"),
        "response_format": (_text_format, "only response_format type 'text' is supported"),
        "audio": (_unset, "audio output is not supported"),
        "modalities": (_text_only, "only the 'text' modality is supported"),
        "prediction": (_unset, "predicted outputs are not supported"),
        "web_search_options": (_unset, "web search is not supported"),
        "reasoning_effort": (_unset, "this model has no reasoning-effort setting"),
        "verbosity": (_unset, "this model has no verbosity setting"),
        "store": (_not_stored, "this server does not store completions"),
    }
)
"""OpenAI parameters that would change the answer if honoured: any value but the harmless ones
is a 400 naming the parameter, so a client never believes it got what it asked for."""


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: str | None = None


class MessageIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise InvalidParameterError(
                    f"messages[{index}]: content parts of type '{part.type}' are not supported; "
                    "this model takes text only",
                    param=f"messages[{index}].content",
                )
            pieces.append(part.text)
        return "".join(pieces)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Parameters shared by chat and text completions."""

    model_config = _STRICT

    model: str | None = Field(default=None, max_length=256)
    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    max_tokens: TokenCount | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=512)
    logit_bias: Annotated[dict[str, Bias], Field(max_length=MAX_LOGIT_BIAS)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, (harmless, reason) in REFUSED.items():
                if name in data and not harmless(data[name]):
                    raise InvalidParameterError(
                        f"'{name}' is not supported by this server: {reason}", param=name
                    )
        return data

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not _TOKEN_ID.fullmatch(key) or int(key) >= 2**31:
                raise ValueError(
                    'keys must be token ids written as decimal integers, e.g. {"1234": -100}'
                )
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported; send separate requests for more choices")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise InvalidParameterError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            seed=self.seed,
            logit_bias=tuple((int(k), v) for k, v in (self.logit_bias or {}).items()),
        )

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def extra_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParameterError(
                "top_logprobs requires logprobs to be true", param="top_logprobs"
            )
        return self

    def prompt_for_audit(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text(i)} for i, m in enumerate(self.messages)]

    def to_generation_params(self) -> GenerationParams:
        messages = tuple(ChatMessage(m.role, m.text(i)) for i, m in enumerate(self.messages))
        return GenerationParams(
            messages=messages,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            stop=self.stops(),
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            sampling=self.sampling(),
        )


class CompletionRequest(_SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.suffix:
            raise InvalidParameterError(
                "suffix (fill-in-the-middle) is not supported", param="suffix"
            )
        return self

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def prompt_for_audit(self) -> str:
        return self.prompt_text

    def to_generation_params(self) -> GenerationParams:
        return GenerationParams(
            prompt=self.prompt_text,
            # OpenAI's legacy completions default to 16 tokens.
            max_tokens=16 if self.max_tokens is None else self.max_tokens,
            stop=self.stops(),
            logprobs=self.logprobs,
            sampling=self.sampling(),
        )
