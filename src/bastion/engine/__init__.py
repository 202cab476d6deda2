"""Inference engines behind one protocol: ``generate(params) -> AsyncIterator[Chunk]``."""

from bastion.engine.base import (
    ChatMessage,
    Chunk,
    Engine,
    GenerationParams,
    ModelInfo,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)

__all__ = [
    "ChatMessage",
    "Chunk",
    "Engine",
    "GenerationParams",
    "ModelInfo",
    "SamplingParams",
    "TokenLogprob",
    "TopLogprob",
]
