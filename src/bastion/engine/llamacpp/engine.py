"""The embedded llama.cpp engine with continuous batching.

One thread owns the llama.cpp context. Requests enter through an inbox queue and each carries
its own asyncio output queue (chunks, then ``None``; an exception travels the same way). Every
step decodes one batch holding the next token of each running sequence plus a bounded chunk of
newcomers' prompts. Each running request has a slot: its own KV sequence (see ``scheduler``).

When requests wait and every slot is busy, the stream that has run longest past
``engine.time_slice`` is paused: its KV state is copied out, its slot goes to the next in line,
and it rejoins the back of the queue, resuming bit-for-bit where it stopped. Nobody waits for a
whole stream to end before their first token.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import llama_cpp as ll

from bastion.engine.base import (
    Chunk,
    EngineState,
    FinishReason,
    GenerationParams,
    ModelInfo,
    ModelSpec,
    TokenLogprob,
)
from bastion.engine.chat_template import ChatTemplate
from bastion.engine.lifecycle import Lifecycle
from bastion.engine.llamacpp.batch import add_token, logits_row, open_context
from bastion.engine.llamacpp.budget import check_logit_bias, completion_budget
from bastion.engine.llamacpp.kv import SlotStreams
from bastion.engine.llamacpp.model import LlamaModel, repack_decision
from bastion.engine.llamacpp.prompt import ChatPrompt, chat_prompt, request_tokens
from bastion.engine.llamacpp.requests import (
    Outbox,
    Request,
    Sequence,
    Sink,
    request_of,
)
from bastion.engine.llamacpp.sampler import SamplerChain, compute_logprobs
from bastion.engine.llamacpp.scheduler import Slot, choose_slot, prefix_donor
from bastion.engine.llamacpp.selftest import run_self_test
from bastion.engine.llamacpp.trace import open_trace
from bastion.engine.stops import StopBuffer
from bastion.errors import (
    BastionError,
    EngineError,
    ModelLoadError,
    ServiceUnavailableError,
)
from bastion.integrity.verify import FileIdentity, file_identity
from bastion.log import request_id_var
from bastion.settings import EngineSettings

log = logging.getLogger(__name__)


class LlamaCppEngine:
    """Serves one GGUF model from one owner thread; see the module docstring."""

    def __init__(
        self,
        name: str,
        weights: Path,
        digest: str,
        settings: EngineSettings,
        *,
        chat_template: str | None = None,
        identity: FileIdentity | None = None,
        completion_only: bool = False,
    ) -> None:
        self._name = name
        self._completion_only = completion_only
        self._identity = identity
        self._chat_template = chat_template
        self._weights = weights
        self._digest = digest
        self._settings = settings
        self._inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._model: LlamaModel | None = None
        self._template: ChatTemplate | None = None
        self._prompt: ChatPrompt | None = None
        self._ctx_per_slot = 0
        self._running = 0
        self._outbox = Outbox(settings.stream_interval)
        self._failed = False
        self._tokenizing = 0
        self._tokenizing_lock = threading.Lock()
        self._created = int(time.time())
        self._chat = False
        """Set at load: whether the model has a chat template to render messages with."""
        self._memory = 0
        self.lifecycle = Lifecycle(name, "llamacpp")

    @classmethod
    def from_spec(cls, spec: ModelSpec, settings: EngineSettings) -> LlamaCppEngine:
        """The engine for a verified model; ``settings`` already carry the model's own."""
        assert spec.weights is not None  # noqa: S101 - the factory refuses a spec without
        return cls(
            spec.name,
            spec.weights,
            spec.digest,
            settings,
            chat_template=spec.chat_template,
            identity=spec.identity,
            completion_only=spec.completion_only,
        )

    # ---- lifecycle (event-loop side) -------------------------------------------------

    async def start(self) -> None:
        self.lifecycle.move(EngineState.STARTING, f"loading {self._weights.name} in this process")
        self._thread = threading.Thread(target=self._run, name=f"engine-{self._name}", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._loaded.wait)
        if self._load_error is not None:
            message = getattr(self._load_error, "message", None) or "failed to load"
            self.lifecycle.move(EngineState.FAILED, message)
            raise self._load_error
        if not self._closed and not self._failed:
            self.lifecycle.move(EngineState.READY, "loaded and passed its self-test")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.lifecycle.move(EngineState.STOPPING, "closing")
        if self._template is not None:
            self._template.close()  # a render in progress fails now instead of delaying shutdown
        self._inbox.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self.lifecycle.move(EngineState.STOPPED, "closed")

    @property
    def ready(self) -> bool:
        return self.lifecycle.ready and not self._closed and not self._failed

    @property
    def running(self) -> int:
        """Sequences being decoded now (read from the event loop; written by the engine)."""
        return self._running

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            self._name,
            self._digest,
            self._ctx_per_slot,
            self._created,
            chat=self._chat,
            memory=self._memory,
        )

    # ---- requests (event-loop side) ----------------------------------------------------

    async def generate(self, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        request = await self.submit(params)
        try:
            while (item := await request.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.cancelled = True  # stops the sequence at its next step if still running

    async def submit(self, params: GenerationParams, sink: Sink | None = None) -> Request:
        """Queue a generation; errors found before it runs (400s, 503s) raise here.

        Its output goes to ``request.out``, or with a ``sink`` to ``sink.deliver`` on the owner
        thread. Setting ``request.cancelled`` stops it at the next step with no further output.
        """
        if not self.ready:
            raise ServiceUnavailableError(f"model '{self._name}' is not loaded")
        assert self._model is not None  # noqa: S101 - guarded by ready
        check_logit_bias(params, self._model.n_vocab)
        prompt = await asyncio.to_thread(self._tokenize_guarded, params)
        max_tokens = completion_budget(
            len(prompt), params.max_tokens, self._ctx_per_slot, self._settings
        )
        loop = asyncio.get_running_loop()
        request = Request(prompt, max_tokens, params, loop, request_id_var.get(), sink=sink)
        if self._closed or self._failed:
            raise ServiceUnavailableError(f"model '{self._name}' is not available")
        self._inbox.put(request)
        return request

    def _tokenize_guarded(self, params: GenerationParams) -> list[int]:
        """Tokenise unless closing; ``_release`` waits for these before freeing the model."""
        with self._tokenizing_lock:
            if self._closed:
                raise ServiceUnavailableError("the server is shutting down")
            self._tokenizing += 1
        try:
            assert self._model is not None  # noqa: S101 - guarded by ready
            return request_tokens(self._name, self._model, self._prompt, params)
        finally:
            with self._tokenizing_lock:
                self._tokenizing -= 1

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
            if self._template is not None:
                self._template.close()
            if self._model is not None:
                self._model.close()
            self._loaded.set()
            return
        self._loaded.set()
        try:
            self._loop()
        except BaseException as exc:
            # Nothing may wait forever on a dead engine: fail every request it holds.
            log.exception("the engine thread of %s failed", self._name)
            self._failed = True
            self.lifecycle.move(
                EngineState.FAILED, f"the engine thread died: {exc.__class__.__name__}"
            )
            self._fail_all(EngineError("the engine failed; the request was not completed"))
            self._running = 0
        finally:
            self._release()

    def _load(self) -> None:
        started = time.perf_counter()
        settings = self._settings
        repack = repack_decision(settings.repack)
        log.log(
            logging.WARNING if repack.risky else logging.INFO,
            "loading %s with llama.cpp, repack %s: %s",
            self._name,
            repack.label,
            repack.reason,
        )
        self._model = model = LlamaModel(self._weights, repack=repack.enabled)
        if self._identity is not None and file_identity(self._weights) != self._identity:
            # Swapped between verification and load: what llama.cpp mapped is unverified.
            raise ModelLoadError(
                f"model '{self._name}': {self._weights.name} was replaced between "
                "verification and load; refusing it"
            )
        self._load_template(model)
        opened = open_context(self._name, model, settings)
        self._ctx, self._batch, self._n_batch = opened.ctx, opened.batch, opened.n_batch
        self._kv = SlotStreams(opened.ctx)
        self._ctx_per_slot = opened.ctx_per_slot
        self._slots = [Slot(seq_id=i) for i in range(settings.slots)]
        self._trace, self._decode = open_trace(ll.llama_decode)  # off unless asked: see trace
        self._memory = model.memory_bytes(opened.n_ctx)
        self._self_test(model)
        log.info(
            "loaded %s: %d slots x %d tokens, %d threads, %.2fs",
            self._name,
            settings.slots,
            self._ctx_per_slot,
            opened.threads,
            time.perf_counter() - started,
        )

    def _load_template(self, model: LlamaModel) -> None:
        """Checked before a context exists: a template refused at load costs no KV memory."""
        source = None if self._completion_only else self._chat_template
        self._prompt = chat_prompt(self._name, model, source, completion_only=self._completion_only)
        if self._prompt is not None:
            self._template, self._chat = self._prompt.template, True

    def _self_test(self, model: LlamaModel) -> None:
        """Decode a fixed prompt before serving (see ``selftest``); also the warm-up."""
        started = time.perf_counter()
        try:
            run_self_test(self._name, model, self._ctx, self._batch)
        finally:
            self._kv.clear_all()
        log.info("%s passed its self-test in %.2fs", self._name, time.perf_counter() - started)

    def _release(self) -> None:
        deadline = time.monotonic() + 30
        while self._tokenizing and time.monotonic() < deadline:  # never free a model in use
            time.sleep(0.01)
        if self._trace is not None:
            self._trace.close()
        ll.llama_batch_free(self._batch)
        ll.llama_free(self._ctx)
        if self._template is not None:
            self._template.close()
        if self._model is not None:
            self._model.close()

    def _fail_all(self, error: BastionError) -> None:
        self._outbox.fail_held(error)
        self._fail_queued(error)

    def _loop(self) -> None:
        running: list[Sequence] = []
        queue_: collections.deque[Request | Sequence] = collections.deque()
        while True:
            stopping = self._receive(queue_, block=not running and not queue_)
            if stopping:
                error = ServiceUnavailableError("the server is shutting down")
                for seq in running:
                    self._finish_with_error(seq, error)
                for item in queue_:
                    request_of(item).send(error)
                self._fail_queued(error)
                self._running = 0
                self._outbox.flush()
                return
            running[:] = [s for s in running if not self._drop_if_cancelled(s)]
            self._admit(queue_, running)
            self._time_slice(queue_, running)
            self._running = len(running)
            if running:
                self._step(running)
                self._running = len(running)
            self._outbox.flush()  # one hand-off per step for every stream

    def _receive(self, queue_: collections.deque[Request | Sequence], *, block: bool) -> bool:
        """Move new requests from the inbox to the run queue; True when asked to stop."""
        try:
            item = self._inbox.get(block=block)
            while True:
                if item is None:
                    return True
                self._outbox.held.add(item)
                queue_.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return False

    def _admit(
        self, queue_: collections.deque[Request | Sequence], running: list[Sequence]
    ) -> None:
        """Give free slots to the run queue in FIFO order: new requests and paused streams."""
        while queue_:
            item = queue_[0]
            if request_of(item).cancelled:
                queue_.popleft()
                if isinstance(item, Sequence):
                    self._drop_if_cancelled(item)
                self._outbox.held.discard(request_of(item))
                continue
            if isinstance(item, Sequence):
                assert item.paused is not None  # noqa: S101 - only paused sequences queue
                # its own KV replaces the slot's: take the least valuable cache
                choice = choose_slot(self._slots, item.paused.tokens, reuse=False)
                if choice is not None and self._kv.copy_pending(choice[0]):
                    return  # resume after the step, once the copy is done
            else:
                choice = choose_slot(self._slots, item.prompt, reuse=self._settings.prefix_cache)
            if choice is None:
                return
            queue_.popleft()
            slot, keep = choice
            if not isinstance(item, Sequence):
                running.append(self._start(item, slot, keep))
            elif self._resume(item, slot):
                running.append(item)

    def _start(self, request: Request, slot: Slot, keep: int) -> Sequence:
        donor = (
            prefix_donor(self._slots, slot, request.prompt, keep)
            if self._settings.prefix_cache
            else None
        )
        if donor is not None:  # a busy slot holds a longer prefix (a shared system prompt)
            keep = self._kv.copy_prefix(donor[0], slot, donor[1])
        else:
            keep = self._kv.keep_prefix(slot, keep)
        slot.busy = True
        assert self._model is not None  # noqa: S101
        sampler = SamplerChain(request.params.sampling, self._model.n_vocab)
        sampler.prime(request.prompt)
        stops = StopBuffer(request.params.stop)
        now = time.monotonic()
        return Sequence(
            request, slot, sampler, now, reused=keep, stops=stops, queued=now - request.submitted
        )

    def _time_slice(
        self, queue_: collections.deque[Request | Sequence], running: list[Sequence]
    ) -> None:
        """Pause the longest-running streams past their time slice while others wait."""
        limit = self._settings.time_slice
        waiting = sum(1 for item in queue_ if not request_of(item).cancelled)
        if not limit or not waiting:
            return
        now = time.monotonic()
        due = sorted(
            (s for s in running if not s.prefilling and now - s.started >= limit),
            key=lambda s: s.started,
        )
        for seq in due[:waiting]:
            if self._pause(seq):
                running.remove(seq)
                queue_.append(seq)
        if due:
            self._admit(queue_, running)

    def _pause(self, seq: Sequence) -> bool:
        slot = seq.slot
        seq.paused = self._kv.save(slot)
        if seq.paused is None:
            return False  # could not copy the state out: keep running instead
        slot.busy, slot.last_used = False, time.monotonic()
        log.debug(
            "paused after %d tokens (%d bytes of KV)",
            seq.generated,
            len(seq.paused.state),
            extra={"request_id": seq.request.request_id},
        )
        return True

    def _resume(self, seq: Sequence, slot: Slot) -> bool:
        paused = seq.paused
        assert paused is not None  # noqa: S101 - only paused sequences are queued
        restored = self._kv.restore(paused, slot)
        slot.busy = True
        seq.slot, seq.paused, seq.started = slot, None, time.monotonic()
        if not restored:
            self._finish_with_error(seq, EngineError("the engine could not resume a stream"))
        return restored

    def _add(self, token: int, pos: int, seq_id: int, *, logits: bool) -> int:
        return add_token(self._batch, token, pos, seq_id, logits=logits)

    def _step(self, running: list[Sequence]) -> None:
        # (sequence, token, position, logits?): the streams' next tokens, then prompt tokens.
        planned: list[tuple[Sequence, int, int, bool]] = []
        for seq in running:
            seq.batch_index = -1
            if not seq.prefilling:
                cached = seq.slot.cached
                planned.append((seq, seq.next_token, len(cached), True))
                cached.append(seq.next_token)
        decoding = len(planned)
        # While others stream, a long prompt advances in small chunks so their next token
        # comes soon; alone, it prefills at full batch size.
        prefill = self._settings.prefill_chunk if decoding else self._n_batch
        budget = min(self._n_batch - decoding, prefill)
        for seq in running:
            if budget <= 0:
                break
            if not seq.prefilling:
                continue
            cached, prompt = seq.slot.cached, seq.request.prompt
            take = prompt[len(cached) : len(cached) + budget]
            for token in take:
                planned.append((seq, token, len(cached), len(cached) == len(prompt) - 1))
                cached.append(token)
            budget -= len(take)
        # In sequence-id order (each sequence's own tokens keep theirs): llama.cpp decodes
        # sequences in one pass only when their ids follow each other (see scheduler).
        self._batch.n_tokens = 0
        for seq, token, pos, logits in sorted(planned, key=lambda p: p[0].slot.seq_id):
            index = self._add(token, pos, seq.slot.seq_id, logits=logits)
            if logits:
                seq.batch_index = index
        status = self._decode(self._ctx, self._batch)
        if self._trace is not None:
            self._trace.step(decoding, len(running), len(self._outbox.held))
        self._kv.decoded(status)
        if status != 0:
            log.error(
                "llama_decode returned %d for a batch of %d tokens", status, self._batch.n_tokens
            )
            for seq in running:
                self._finish_with_error(seq, EngineError("the engine failed to decode"))
                self._kv.drop(seq.slot)
            running.clear()
            return
        running[:] = [seq for seq in running if not self._advance(seq)]

    def _advance(self, seq: Sequence) -> bool:
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
            logits = logits_row(self._ctx, seq.batch_index, model.n_vocab)
            logprobs = (
                compute_logprobs(logits, token, request.params.logprobs, model.token_bytes),
            )
        text, hit = seq.stops.push(seq.utf8.push(model.piece(token)))
        if hit:
            return self._finish(seq, text, logprobs, "stop")
        out_of_room = len(seq.slot.cached) >= self._ctx_per_slot
        if seq.generated >= request.max_tokens or out_of_room:
            return self._finish(seq, text + self._drain(seq), logprobs, "length")
        seq.next_token = token
        if text or logprobs:
            self._outbox.items.append(
                (
                    request,
                    Chunk(
                        text,
                        len(request.prompt),
                        seq.generated,
                        logprobs,
                        cached_tokens=seq.reused,
                        queued=seq.queued,
                    ),
                )
            )
        return False

    def _drain(self, seq: Sequence) -> str:
        """Text still held back (partial UTF-8, possible stop prefix) when output ends."""
        text, hit = seq.stops.push(seq.utf8.flush())
        return text if hit else text + seq.stops.flush()

    def _finish(
        self, seq: Sequence, text: str, logprobs: tuple[TokenLogprob, ...], reason: FinishReason
    ) -> bool:
        request = seq.request
        last = Chunk(
            text, len(request.prompt), seq.generated, logprobs, reason, seq.reused, seq.queued
        )
        self._outbox.items += ((request, last), (request, None))
        self._free(seq)
        return True

    def _finish_with_error(self, seq: Sequence, error: BaseException) -> None:
        self._outbox.items.append((seq.request, error))
        self._free(seq)

    def _drop_if_cancelled(self, seq: Sequence) -> bool:
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
        self._outbox.held.discard(request)  # nothing more goes to it
        return True

    def _free(self, seq: Sequence) -> None:
        """Release the slot at once; its KV stays as a prefix cache for the next request."""
        seq.sampler.close()
        if seq.paused is None:
            seq.slot.busy, seq.slot.last_used = False, time.monotonic()
        seq.paused = None

    def _fail_queued(self, error: BastionError) -> None:
        while True:
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                request.send(error)
