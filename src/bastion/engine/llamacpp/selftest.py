"""The self-test a model passes before it is served.

After loading, the engine decodes a fixed prompt and a few greedy tokens once. A broken kernel
(a CPU llama.cpp mis-handles, a corrupt build) shows here as a failed decode or as logits that
are not numbers, and the model is marked failed with that reason instead of failing its first
user. It doubles as the warm-up: graphs for prompt batches and single-token steps are built
before the first request arrives.
"""

from __future__ import annotations

from typing import Any

import llama_cpp as ll
import numpy as np
import numpy.typing as npt

from bastion.engine.llamacpp.batch import add_token, logits_row
from bastion.engine.llamacpp.model import LlamaModel
from bastion.errors import ModelLoadError

PROMPT = "The capital of France is"
TOKENS = 4
"""Greedy tokens decoded one by one after the prompt."""


def logits_problem(logits: npt.NDArray[np.float32]) -> str | None:
    """Why these logits cannot come from a working model, or None when they can."""
    finite = np.isfinite(logits)
    if not finite.all():
        return f"{int((~finite).sum())} of {logits.size} logits are NaN or infinite"
    if logits.size == 0 or float(logits.max()) == float(logits.min()):
        return "every logit has the same value"
    return None


def run_self_test(name: str, model: LlamaModel, ctx: Any, batch: Any, seq_id: int = 0) -> None:
    """Decode ``PROMPT`` plus ``TOKENS`` greedy tokens in sequence ``seq_id``; raise
    ``ModelLoadError`` naming what went wrong. The caller clears the KV afterwards."""
    prompt = model.tokenize(PROMPT, add_special=model.add_bos)
    batch.n_tokens = 0
    for pos, token in enumerate(prompt):
        add_token(batch, token, pos, seq_id, logits=pos == len(prompt) - 1)
    index = len(prompt) - 1
    for step in range(TOKENS + 1):
        status = ll.llama_decode(ctx, batch)
        if status != 0:
            raise ModelLoadError(
                f"model '{name}' failed its self-test: llama_decode returned {status} "
                f"at step {step}; it is not served"
            )
        logits = logits_row(ctx, index, model.n_vocab)
        problem = logits_problem(logits)
        if problem is not None:
            raise ModelLoadError(
                f"model '{name}' failed its self-test: {problem} at step {step}; "
                "it is not served (try engine.repack: off, see docs/engine.md)"
            )
        if step == TOKENS:
            return
        batch.n_tokens = 0
        index = add_token(batch, int(np.argmax(logits)), len(prompt) + step, seq_id, logits=True)
