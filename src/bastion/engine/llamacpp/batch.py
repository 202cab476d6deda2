"""llama.cpp's context for the engine, and small helpers over its ``llama_batch`` and output
logits."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llama_cpp as ll
import numpy as np
import numpy.typing as npt

from bastion.errors import ModelLoadError
from bastion.settings import EngineSettings

if TYPE_CHECKING:
    from bastion.engine.llamacpp.model import LlamaModel


@dataclass(frozen=True)
class OpenedContext:
    ctx: Any
    batch: Any
    n_batch: int
    n_ctx: int
    """KV cells over every slot."""
    ctx_per_slot: int
    threads: int


def open_context(name: str, model: LlamaModel, settings: EngineSettings) -> OpenedContext:
    """One context holding ``settings.slots`` sequences of ``ctx_per_slot`` tokens (at most
    the model's training context) and the batch every decode step fills."""
    ctx_per_slot = min(settings.ctx_per_slot, model.n_ctx_train or settings.ctx_per_slot)
    params = ll.llama_context_default_params()
    params.n_ctx = ctx_per_slot * settings.slots
    params.n_seq_max = settings.slots
    params.n_batch = params.n_ubatch = max(settings.batch_tokens, settings.slots)
    params.n_threads = params.n_threads_batch = settings.resolved_threads()
    # A KV stream per slot: attention over a sequence never mixes in other sequences'
    # cells, so the same request gives the same text alone or batched.
    params.kv_unified = False
    params.no_perf = True
    ctx = ll.llama_init_from_model(model.ptr, params)
    if not ctx:
        raise ModelLoadError(f"llama.cpp could not create a context for '{name}'")
    n_batch = int(params.n_batch)
    return OpenedContext(
        ctx,
        ll.llama_batch_init(n_batch, 0, 1),
        n_batch,
        int(params.n_ctx),
        min(ctx_per_slot, int(ll.llama_n_ctx_seq(ctx))),
        int(params.n_threads),
    )


def add_token(batch: Any, token: int, pos: int, seq_id: int, *, logits: bool) -> int:
    """Append one token of sequence ``seq_id`` at position ``pos``; returns its batch index."""
    i = int(batch.n_tokens)
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits
    batch.n_tokens = i + 1
    return i


def logits_row(ctx: Any, index: int, n_vocab: int) -> npt.NDArray[np.float32]:
    """The raw logits of batch position ``index`` of the last decode (a view, not a copy)."""
    pointer = ll.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(
        ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)
    )
