"""Per-sequence sampler chains built from ``SamplingParams`` (sampling runs in llama.cpp).

Plain greedy decoding (temperature 0, no logit bias, no penalties) skips the chain: llama.cpp's
``llama_sampler_sample`` copies the whole vocabulary into a candidate array before its greedy
stage looks at it (about 0.2 ms per token here, 1-2% of a 4-sequence step), where an argmax over
the logits row picks the same token (the first of equal maxima, as llama.cpp's greedy does) in
a tenth of that.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence

import llama_cpp as ll
import numpy as np
import numpy.typing as npt

from bastion.engine.base import SamplingParams, TokenLogprob, TopLogprob
from bastion.engine.llamacpp.batch import logits_row

PENALTY_WINDOW = 64
"""Tokens the repetition/frequency/presence penalties look back over (llama-server's default)."""


class SamplerChain:
    def __init__(self, params: SamplingParams, n_vocab: int) -> None:
        self._n_vocab = n_vocab
        self.uses_penalties = (
            params.repetition_penalty != 1.0
            or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0
        )
        self.greedy = (
            params.temperature <= 0.0 and not params.logit_bias and not self.uses_penalties
        )
        """Plain argmax: no stage before the greedy one that could change a logit (no chain)."""
        if self.greedy:
            self._ptr = None
            return
        chain_params = ll.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._ptr = ll.llama_sampler_chain_init(chain_params)
        add = ll.llama_sampler_chain_add
        if params.logit_bias:
            # First in the chain, as in llama-server: the bias shapes what every later stage
            # sees. llama.cpp copies the array, so it need not outlive this call.
            biases = (ll.llama_logit_bias * len(params.logit_bias))(
                *(ll.llama_logit_bias(token, bias) for token, bias in params.logit_bias)
            )
            add(
                self._ptr,
                ll.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases),
            )
        if self.uses_penalties:
            add(
                self._ptr,
                ll.llama_sampler_init_penalties(
                    n_vocab,
                    PENALTY_WINDOW,
                    params.repetition_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.temperature <= 0.0:
            add(self._ptr, ll.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(self._ptr, ll.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(self._ptr, ll.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(self._ptr, ll.llama_sampler_init_min_p(params.min_p, 1))
        add(self._ptr, ll.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        add(self._ptr, ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def prime(self, tokens: Sequence[int]) -> None:
        """Feed prompt tokens so repetition penalties see them, as llama-server does."""
        if self.uses_penalties:
            for token in tokens[-PENALTY_WINDOW:]:
                ll.llama_sampler_accept(self._ptr, token)

    def sample(self, ctx: ll.llama_context_p, index: int) -> int:
        """Sample from the logits at batch ``index`` and accept the token."""
        if self.greedy:  # nothing to accept: greedy keeps no state
            return int(np.argmax(logits_row(ctx, index, self._n_vocab)))
        return int(ll.llama_sampler_sample(self._ptr, ctx, index))

    def close(self) -> None:
        if self._ptr:
            ll.llama_sampler_free(self._ptr)
            self._ptr = None


def compute_logprobs(
    logits: npt.NDArray[np.float32], token: int, top: int, token_bytes: Callable[[int], bytes]
) -> TokenLogprob:
    """Log-softmax of the raw logits: the chosen token's logprob and the ``top`` best.

    ``bytes`` is each token's own bytes, as OpenAI returns them: a token holding part of a
    UTF-8 character shows U+FFFD in ``token`` but its real bytes, so clients can join them.
    """
    shifted = logits.astype(np.float64) - float(logits.max())
    log_norm = math.log(float(np.exp(shifted).sum()))
    alternatives: tuple[TopLogprob, ...] = ()
    if top > 0:
        best = np.argpartition(-shifted, top - 1)[:top]
        best = best[np.argsort(-shifted[best])]
        alternatives = tuple(_top(token_bytes, int(t), float(shifted[t]) - log_norm) for t in best)
    raw = token_bytes(token)
    return TokenLogprob(_display(raw), float(shifted[token]) - log_norm, tuple(raw), alternatives)


def _top(token_bytes: Callable[[int], bytes], token: int, logprob: float) -> TopLogprob:
    raw = token_bytes(token)
    return TopLogprob(_display(raw), logprob, tuple(raw))


def _display(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")
