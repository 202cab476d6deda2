"""The embedded llama.cpp engine with continuous batching.

One thread owns the llama.cpp context. Requests enter through an inbox queue and each carries
its own asyncio output queue (chunks, then ``None``; an exception travels the same way). Every
step decodes one batch holding the next token of each running sequence plus a bounded chunk of
newcomers' prompts, each sequence in its own KV-cache sequence id (one per slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as ll
import numpy as np

from bastion.engine.base import Chunk, FinishReason, GenerationParams, ModelInfo, TokenLogprob
from bastion.engine.chat_template import CHATML, ChatTemplate
from bastion.engine.llamacpp.model import LlamaModel
from bastion.engine.llamacpp.sampler import SamplerChain, compute_logprobs
from bastion.engine.stops import StopBuffer, Utf8Stream
from bastion.errors import (
    BastionError,
    ContextLengthExceededError,
    EngineError,
    InvalidRequestError,
    ModelLoadError,
    ServiceUnavailableError,
)
from bastion.log import request_id_var
from bastion.settings import EngineSettings

log = logging.getLogger(__name__)

_Item = Chunk | BaseException | None


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    max_tokens: int
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    request_id: str = "-"
    out: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def send(self, item: _Item) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is already closed
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)


@dataclass(eq=False)
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)
    """Tokens whose keys and values are in this slot's KV sequence, in position order."""
    last_used: float = 0.0


@dataclass(eq=False)
class _Sequence:
    request: _Request
    slot: _Slot
    sampler: SamplerChain
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    stops: StopBuffer = field(default_factory=lambda: StopBuffer(()))
    generated: int = 0
    next_token: int = -1
    batch_index: int = -1

    @property
    def prefilling(self) -> bool:
        return self.next_token < 0


class LlamaCppEngine:
    """Serves one GGUF model from one owner thread; see the module docstring."""

    def __init__(self, name: str, weights: Path, digest: str, settings: EngineSettings) -> None:
        self._name = name
        self._weights = weights
        self._digest = digest
        self._settings = settings
        self._inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._model: LlamaModel | None = None
        self._template: ChatTemplate | None = None
        self._ctx_per_slot = 0
        self._created = int(time.time())

    # ---- lifecycle (event-loop side) -------------------------------------------------

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"engine-{self._name}", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._loaded.wait)
        if self._load_error is not None:
            raise self._load_error

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self._load_error is None and not self._closed

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self._name, self._digest, self._ctx_per_slot, self._created)

    # ---- requests (event-loop side) ----------------------------------------------------

    async def generate(self, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        if not self.ready:
            raise ServiceUnavailableError(f"model '{self._name}' is not loaded")
        prompt = await asyncio.to_thread(self._tokenize_prompt, params)
        max_tokens = self._budget(len(prompt), params.max_tokens)
        request = _Request(
            prompt, max_tokens, params, asyncio.get_running_loop(), request_id_var.get()
        )
        self._inbox.put(request)
        try:
            while (item := await request.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.cancelled = True  # stops the sequence at its next step if still running

    def _tokenize_prompt(self, params: GenerationParams) -> list[int]:
        model, template = self._model, self._template
        assert model is not None  # noqa: S101 - guarded by ready
        assert template is not None  # noqa: S101
        if params.messages is not None:
            text = template.render(params.messages)
            bos = model.bos_text
            add_special = model.add_bos and not (bos and text.startswith(bos))
            tokens = model.tokenize(text, add_special=add_special, parse_special=True)
        else:
            tokens = model.tokenize(params.prompt or "", add_special=model.add_bos)
        if not tokens:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        return tokens

    def _budget(self, n_prompt: int, max_tokens: int | None) -> int:
        limit = self._ctx_per_slot
        if n_prompt >= limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens, but the prompt has "
                f"{n_prompt} tokens. Shorten the prompt.",
                param="messages",
            )
        if max_tokens is None:
            return limit - n_prompt
        if n_prompt + max_tokens > limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
                "completion). Reduce the prompt or max_tokens.",
                param="max_tokens",
            )
        return max_tokens

    # ---- owner thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self._load_error = (
                exc
                if isinstance(exc, BastionError)
                else ModelLoadError(f"model '{self._name}' failed to load")
            )
            log.exception("loading %s failed", self._name)
            self._loaded.set()
            return
        self._loaded.set()
        try:
            self._loop()
        finally:
            self._release()

    def _load(self) -> None:
        started = time.perf_counter()
        settings = self._settings
        self._model = model = LlamaModel(self._weights)
        ctx_per_slot = min(settings.ctx_per_slot, model.n_ctx_train or settings.ctx_per_slot)
        params = ll.llama_context_default_params()
        params.n_ctx = ctx_per_slot * settings.slots
        params.n_seq_max = settings.slots
        params.n_batch = params.n_ubatch = max(settings.batch_tokens, settings.slots)
        params.n_threads = params.n_threads_batch = settings.resolved_threads()
        params.kv_unified = False
        params.no_perf = True
        ctx = ll.llama_init_from_model(model.ptr, params)
        if not ctx:
            raise ModelLoadError(f"llama.cpp could not create a context for '{self._name}'")
        self._ctx = ctx
        self._memory = ll.llama_get_memory(ctx)
        self._ctx_per_slot = min(ctx_per_slot, int(ll.llama_n_ctx_seq(ctx)))
        self._n_batch = int(params.n_batch)
        self._batch = ll.llama_batch_init(self._n_batch, 0, 1)
        self._slots = [_Slot(seq_id=i) for i in range(settings.slots)]
        self._template = ChatTemplate(
            model.chat_template() or CHATML, bos_token=model.bos_text, eos_token=model.eos_text
        )
        self._warm_up()
        log.info(
            "loaded %s: %d slots x %d tokens, %d threads, %.2fs",
            self._name,
            settings.slots,
            self._ctx_per_slot,
            params.n_threads,
            time.perf_counter() - started,
        )

    def _warm_up(self) -> None:
        """One tiny decode so the first request does not pay for graph allocation."""
        assert self._model is not None  # noqa: S101
        token = max(ll.llama_vocab_bos(self._model.vocab), 0)
        self._batch.n_tokens = 0
        self._add(token, 0, 0, logits=True)
        ll.llama_decode(self._ctx, self._batch)
        ll.llama_memory_clear(self._memory, True)

    def _release(self) -> None:
        ll.llama_batch_free(self._batch)
        ll.llama_free(self._ctx)
        if self._model is not None:
            self._model.close()

    def _loop(self) -> None:
        running: list[_Sequence] = []
        stopping = False
        while True:
            if not stopping:
                stopping = self._admit(running)
            if stopping:
                for seq in running:
                    self._finish_with_error(
                        seq, ServiceUnavailableError("the server is shutting down")
                    )
                running.clear()
                self._fail_queued()
                return
            running[:] = [s for s in running if not self._drop_if_cancelled(s)]
            if running:
                self._step(running)

    def _admit(self, running: list[_Sequence]) -> bool:
        """Start queued requests on free slots; block only while nothing is running."""
        while len(running) < len(self._slots):
            try:
                request = self._inbox.get(block=not running)
            except queue.Empty:
                return False
            if request is None:
                return True
            if request.cancelled:
                continue
            running.append(self._start(request, running))
        return False

    def _start(self, request: _Request, running: list[_Sequence]) -> _Sequence:
        busy = {id(s.slot) for s in running}
        free = [slot for slot in self._slots if id(slot) not in busy]
        slot = max(free, key=lambda s: (_common_prefix(s.cached, request.prompt), -s.last_used))
        keep = min(_common_prefix(slot.cached, request.prompt), len(request.prompt) - 1)
        if not ll.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            ll.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            keep = 0
        del slot.cached[keep:]
        assert self._model is not None  # noqa: S101
        sampler = SamplerChain(request.params.sampling, self._model.n_vocab)
        sampler.prime(request.prompt)
        return _Sequence(request, slot, sampler, stops=StopBuffer(request.params.stop))

    def _add(self, token: int, pos: int, seq_id: int, *, logits: bool) -> int:
        batch = self._batch
        i = int(batch.n_tokens)
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        return i

    def _step(self, running: list[_Sequence]) -> None:
        self._batch.n_tokens = 0
        for seq in running:
            seq.batch_index = -1
            if not seq.prefilling:
                cached = seq.slot.cached
                seq.batch_index = self._add(
                    seq.next_token, len(cached), seq.slot.seq_id, logits=True
                )
                cached.append(seq.next_token)
        budget = self._n_batch - int(self._batch.n_tokens)
        for seq in running:
            if budget <= 0:
                break
            if not seq.prefilling:
                continue
            cached, prompt = seq.slot.cached, seq.request.prompt
            take = prompt[len(cached) : len(cached) + budget]
            for token in take:
                last = len(cached) == len(prompt) - 1
                index = self._add(token, len(cached), seq.slot.seq_id, logits=last)
                cached.append(token)
                if last:
                    seq.batch_index = index
            budget -= len(take)
        status = ll.llama_decode(self._ctx, self._batch)
        if status != 0:
            log.error(
                "llama_decode returned %d for a batch of %d tokens", status, self._batch.n_tokens
            )
            for seq in running:
                ll.llama_memory_seq_rm(self._memory, seq.slot.seq_id, -1, -1)
                seq.slot.cached.clear()
                self._finish_with_error(seq, EngineError("the engine failed to decode"))
            running.clear()
            return
        running[:] = [seq for seq in running if not self._advance(seq)]

    def _advance(self, seq: _Sequence) -> bool:
        """Sample the next token of ``seq`` if it was in the batch; True when it finished."""
        if seq.batch_index < 0:
            return False
        model = self._model
        assert model is not None  # noqa: S101
        request = seq.request
        token = seq.sampler.sample(self._ctx, seq.batch_index)
        seq.generated += 1
        if model.is_eog(token):
            return self._finish(seq, self._drain(seq), (), "stop")
        logprobs: tuple[TokenLogprob, ...] = ()
        if request.params.logprobs is not None:
            pointer = ll.llama_get_logits_ith(self._ctx, seq.batch_index)
            logits = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(model.n_vocab,)
            )
            logprobs = (compute_logprobs(logits, token, request.params.logprobs, model.token_text),)
        text, hit = seq.stops.push(seq.utf8.push(model.piece(token)))
        if hit:
            return self._finish(seq, text, logprobs, "stop")
        out_of_room = len(seq.slot.cached) >= self._ctx_per_slot
        if seq.generated >= request.max_tokens or out_of_room:
            return self._finish(seq, text + self._drain(seq), logprobs, "length")
        seq.next_token = token
        if text or logprobs:
            request.send(Chunk(text, len(request.prompt), seq.generated, logprobs))
        return False

    def _drain(self, seq: _Sequence) -> str:
        """Text still held back (partial UTF-8, possible stop prefix) when output ends."""
        text, hit = seq.stops.push(seq.utf8.flush())
        return text if hit else text + seq.stops.flush()

    def _finish(
        self, seq: _Sequence, text: str, logprobs: tuple[TokenLogprob, ...], reason: FinishReason
    ) -> bool:
        request = seq.request
        request.send(Chunk(text, len(request.prompt), seq.generated, logprobs, reason))
        request.send(None)
        self._free(seq)
        return True

    def _finish_with_error(self, seq: _Sequence, error: BaseException) -> None:
        seq.request.send(error)
        self._free(seq)

    def _drop_if_cancelled(self, seq: _Sequence) -> bool:
        request = seq.request
        if not request.cancelled:
            return False
        log.info(
            "generation cancelled by the client after %d of %d tokens",
            seq.generated,
            request.max_tokens,
            extra={"request_id": request.request_id},
        )
        self._free(seq)
        return True

    def _free(self, seq: _Sequence) -> None:
        seq.sampler.close()
        seq.slot.last_used = time.monotonic()

    def _fail_queued(self) -> None:
        while True:
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                request.send(ServiceUnavailableError("the server is shutting down"))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
