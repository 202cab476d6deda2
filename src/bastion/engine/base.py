"""Engine-facing types. The engine never sees pydantic models or HTTP; only these."""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bastion.engine.cpu import RepackSetting
from bastion.integrity.verify import FileIdentity

if TYPE_CHECKING:
    from bastion.engine.lifecycle import Lifecycle

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
    memory: int = 0
    """Bytes the loaded model holds (weights plus KV cache); 0 when unknown."""


class EngineState(enum.StrEnum):
    """An engine's lifecycle. It moves stopped -> starting -> ready -> stopping -> stopped;
    any state may move to failed (a load that failed, a dead thread or process); a supervised
    engine goes from failed back to starting while it has restarts left."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelSpec:
    """What an engine builder receives: one catalog model, whatever its source.

    A model with local weights has been imported and verified: ``weights`` is the file its
    manifest vouches for. An engine without local weights (a remote upstream) gets None there
    and finds what it needs in ``engine_args``."""

    name: str
    kind: str
    """The engine kind (``ModelDef.engine``) that the factory maps to a builder."""
    weights: Path | None = None
    digest: str = ""
    """SHA-256 of ``weights`` as listed in the manifest ("" without local weights)."""
    identity: FileIdentity | None = None
    """The verified file's identity; an engine checks it again once the file is open."""
    ctx: int | None = None
    chat_template: str | None = None
    completion_only: bool = False
    repack: RepackSetting | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    lora: tuple[Path, ...] = ()

    @property
    def weights_bytes(self) -> int:
        """Size of the weights on disk (0 without local weights): the router's first memory
        estimate, before the engine reports what it really holds."""
        try:
            return self.weights.stat().st_size if self.weights is not None else 0
        except OSError:
            return 0


class Engine(Protocol):
    """An inference engine serving one model. It owns its lifecycle: ``lifecycle.state`` is
    what /ready, /v1/models, /api/status and the metrics report."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def lifecycle(self) -> Lifecycle: ...

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
