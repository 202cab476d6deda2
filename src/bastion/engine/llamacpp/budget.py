"""What one request may ask of a loaded model: its token ids and its completion length.

Pure checks on the numbers the engine knows after loading (vocabulary size, context per slot,
settings), made before a request is queued so that they surface as 400s, never mid-stream.
"""

from __future__ import annotations

from bastion.engine.base import GenerationParams
from bastion.errors import ContextLengthExceededError, InvalidParameterError
from bastion.settings import EngineSettings


def check_logit_bias(params: GenerationParams, n_vocab: int) -> None:
    """Token ids exist only in the model's vocabulary, so the edge cannot check them."""
    unknown = [token for token, _ in params.sampling.logit_bias if token >= n_vocab]
    if unknown:
        raise InvalidParameterError(
            f"logit_bias names token {unknown[0]}, but this model's token ids run from 0 "
            f"to {n_vocab - 1}",
            param="logit_bias",
        )


def completion_budget(
    n_prompt: int, max_tokens: int | None, limit: int, settings: EngineSettings
) -> int:
    """Tokens the request may generate in a slot of ``limit`` tokens, or a 400 saying why not."""
    cap = settings.max_tokens_limit
    if cap and max_tokens is not None and max_tokens > cap:
        raise InvalidParameterError(
            f"max_tokens is {max_tokens}, but this server allows at most {cap} completion "
            "tokens per request",
            param="max_tokens",
        )
    if n_prompt >= limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens, but the prompt has "
            f"{n_prompt} tokens. Shorten the prompt.",
            param="messages",
        )
    if max_tokens is None:
        # Clients that send no max_tokens (the llm CLI) must not run to the end of the
        # context by default: minutes of decoding nobody asked for.
        room = limit - n_prompt
        defaults = [d for d in (settings.default_max_tokens, cap) if d]
        return min([room, *defaults])
    if n_prompt + max_tokens > limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
            "completion). Reduce the prompt or max_tokens.",
            param="max_tokens",
        )
    return max_tokens
