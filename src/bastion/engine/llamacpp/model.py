"""A loaded GGUF model: weights, vocabulary, tokenizer and metadata (no context)."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import llama_cpp as ll

from bastion.engine.cpu import RepackDecision, RepackSetting, decide_repack, read_cpu_flags
from bastion.errors import ModelLoadError

_PIECE_BUF = 256


@functools.cache
def _backend_init() -> None:
    ll.llama_log_set(_SILENT_LOG, None)
    ll.llama_backend_init()


def _silent(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp logs to stderr by default; bastion reports load errors itself."""


_SILENT_LOG: Any = ll.llama_log_callback(_silent)  # kept referenced: C holds the pointer


@functools.cache
def llama_system_info() -> str:
    """What llama.cpp was built with and detects, e.g. ``AVX2 = 1 | AMX_INT8 = 1 | ...``."""
    raw = ll.llama_print_system_info()
    return raw.decode("utf-8", errors="replace") if raw else ""


def repack_decision(setting: RepackSetting = "auto") -> RepackDecision:
    """Bastion's repack decision on this machine; everything that loads a model obeys it."""
    return decide_repack(setting, read_cpu_flags(), llama_system_info())


class LlamaModel:
    def __init__(self, path: Path, *, repack: bool) -> None:
        """Map the weights; ``repack`` lets llama.cpp use its extra (repacking) buffer types,
        which must be off where they crash (``bastion.engine.cpu.decide_repack``)."""
        _backend_init()
        params = ll.llama_model_default_params()
        params.use_mmap = True
        params.use_extra_bufts = repack
        ptr = ll.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise ModelLoadError(f"llama.cpp could not load {path.name}")
        self.ptr = ptr
        self.vocab = ll.llama_model_get_vocab(ptr)
        self.n_vocab: int = ll.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = ll.llama_model_n_ctx_train(ptr)
        self.add_bos: bool = bool(ll.llama_vocab_get_add_bos(self.vocab))
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        if self.ptr:
            ll.llama_model_free(self.ptr)
            self.ptr = None

    def memory_bytes(self, n_ctx: int) -> int:
        """Weights in memory plus an f16 KV cache of ``n_ctx`` cells over every layer."""
        ptr = self.ptr
        heads = max(1, int(ll.llama_model_n_head(ptr)))
        kv_width = int(ll.llama_model_n_embd(ptr)) * int(ll.llama_model_n_head_kv(ptr)) // heads
        kv = n_ctx * int(ll.llama_model_n_layer(ptr)) * 2 * kv_width * 2
        return int(ll.llama_model_size(ptr)) + kv

    def meta(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = ll.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:
            buf = ctypes.create_string_buffer(n + 1)
            ll.llama_model_meta_val_str(self.ptr, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        raw = ll.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (ll.llama_token * capacity)()
        n = ll.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            buf = (ll.llama_token * capacity)()
            n = ll.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """Bytes of one token as output text (control tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(_PIECE_BUF)
        n = ll.llama_token_to_piece(self.vocab, token, buf, _PIECE_BUF, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        piece = buf.raw[:n]
        self._pieces[token] = piece
        return piece

    def token_bytes(self, token: int) -> bytes:
        """Raw bytes of a token, special tokens rendered (for logprobs); may be part of a
        UTF-8 character."""
        buf = ctypes.create_string_buffer(_PIECE_BUF)
        n = ll.llama_token_to_piece(self.vocab, token, buf, _PIECE_BUF, 0, True)
        if n < 0:  # longer than the buffer: -n is its size (an empty text would go unshielded)
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, True)
        return buf.raw[: max(n, 0)]

    def token_text(self, token: int) -> str:
        """Text of a token for display (special tokens included)."""
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def special_texts(self) -> list[str]:
        """Texts that tokenize as control tokens only with ``parse_special``: the tokens whose
        attributes are control or unknown (llama.cpp matches user-defined ones either way)."""
        special = ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_UNKNOWN
        return [
            text
            for token in range(self.n_vocab)
            if ll.llama_vocab_get_attr(self.vocab, token) & special
            and (text := self.token_text(token))
        ]

    @property
    def bos(self) -> int:
        """The BOS token id, or -1 when the vocabulary has none."""
        return int(ll.llama_vocab_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self.vocab, token))

    def special_text(self, token: int) -> str:
        return self.token_text(token) if token >= 0 else ""

    @property
    def bos_text(self) -> str:
        return self.special_text(ll.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        return self.special_text(ll.llama_vocab_eos(self.vocab))
