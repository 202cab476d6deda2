"""Engine-facing types. The engine never sees pydantic models or HTTP; only these."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    """None draws a fresh seed per request; a fixed seed reproduces the same text."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits before sampling; -100/+100 ban/force."""


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationParams:
    """One generation. Exactly one of ``prompt`` and ``messages`` is set."""

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    max_tokens: int | None = None
    """None: the engine's ``default_max_tokens`` (0 there: until a stop or the context's end)."""
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    """None: no logprobs; k >= 0: the sampled token's logprob plus the top k alternatives."""
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of prompt and messages must be set")


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Chunk:
    """A piece of output. The last chunk of a generation carries ``finish_reason``."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    cached_tokens: int = 0
    """Prompt tokens whose KV was reused from the prefix cache instead of computed."""
    queued: float = 0.0
    """Seconds the request waited for a slot before its prompt was processed."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    digest: str
    """SHA-256 of the weight file, as listed in the model's manifest."""
    context_length: int
    """Tokens available to one request (prompt plus completion)."""
    created: int
    """Unix time the model was loaded."""
    chat: bool = True
    """Whether it takes chat messages; False: completion only (prompts, not messages)."""


class Engine(Protocol):
    """An inference engine serving one model."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def ready(self) -> bool: ...

    @property
    def running(self) -> int:
        """Generations in progress (for admission: the rest are waiting)."""
        ...

    async def start(self) -> None:
        """Load the model; raises ``ModelLoadError`` when it cannot be served."""
        ...

    def generate(self, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        """Yield chunks of one generation; errors before the first chunk are caller errors."""
        ...

    async def close(self) -> None: ...
