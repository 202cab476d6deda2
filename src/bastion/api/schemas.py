"""Wire schemas for the OpenAI-compatible endpoints.

Validation happens here once, with bounds on every numeric field; ``to_generation_params``
turns a request into the frozen dataclasses the engine uses. Unknown fields are accepted (the
SDKs send many) and logged by the route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.engine.base import ChatMessage, GenerationParams, SamplingParams
from bastion.errors import InvalidParameterError

MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 256
MAX_MESSAGES = 4096

_STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
TokenCount = Annotated[int, Field(ge=1, le=1_048_576)]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]


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
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParameterError(
                "top_logprobs requires logprobs to be true", param="top_logprobs"
            )
        if self.tools:
            raise InvalidParameterError("tools are not supported by this server", param="tools")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise InvalidParameterError(
                "only response_format type 'text' is supported", param="response_format"
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
