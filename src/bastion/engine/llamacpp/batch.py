"""Small helpers over llama.cpp's ``llama_batch`` and its output logits."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp as ll
import numpy as np
import numpy.typing as npt


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
