"""The router's moving parts: per-model slots, loads and unloads, and the one scheduler task.

The scheduler wakes when something changes (a request waits or ends, an engine changes state,
a load or unload ends) and at its next deadline (a ``swap_after`` or ``idle_ttl`` expiry); each
pass decides synchronously and starts what it decided as tasks, so it never waits on an engine.

Grouping: when a model that requests wait for cannot fit beside the loaded ones, the loaded
ones keep serving until the oldest waiter has waited ``router.swap_after``; then the models in
the way stop taking new requests (later arrivals queue), finish those they have, are unloaded,
and the waiting model loads and serves everyone queued for it. Interleaved requests for two
models thus cost one swap per ``swap_after`` or so, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bastion.catalog import Catalog
from bastion.engine.base import Engine, EngineState, ModelSpec
from bastion.errors import BastionError, ModelConflictError
from bastion.router.admission import Admission
from bastion.router.placement import Limits, Resident, make_room
from bastion.router.slot import Phase, Slot, wait_event
from bastion.router.spec import model_spec, weights_on_disk
from bastion.router.webhook import Event, Webhook
from bastion.settings import RouterSettings
from bastion.store.package import verify_local
from bastion.store.pull import prepare

log = logging.getLogger(__name__)

RETRY_FAILED = 30.0
"""Seconds a failed model answers 503 before a request tries to load it again (an operator's
``load`` or ``swap`` retries at once)."""
HOUSEKEEPING = 5.0
"""Longest sleep of the scheduler between passes (a cheap safety net; passes are woken)."""


class Scheduler:
    def __init__(
        self,
        home: Path,
        catalog: Catalog,
        factory: Callable[[ModelSpec], Engine],
        settings: RouterSettings,
        *,
        require_signature: bool,
        on_state: Callable[[str, str, str], None] | None,
        webhook: Webhook | None,
    ) -> None:
        self._home = home
        self._catalog = catalog
        self._factory = factory
        self._settings = settings
        self._require_signature = require_signature
        self._on_state = on_state
        self._webhook = webhook
        self._slots: dict[str, Slot] = {}
        self._wake = asyncio.Event()
        """Set to run a scheduler pass."""
        self._changed = asyncio.Event()
        """Set (and replaced) whenever a model may have become servable or failed."""
        self._swapping: str | None = None
        """The swap, load or unload in progress (one at a time), for 409 messages."""
        self._swapping_since = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self.swaps = 0
        """Swaps done: transitions that unloaded a model to load another."""

    # ---- bookkeeping --------------------------------------------------------------------

    def _slot(self, name: str) -> Slot:
        slot = self._slots.get(name)
        if slot is None:
            slot = Slot(name)
            slot.admission = Admission(
                functools.partial(self._running, slot),
                self._settings.max_queue,
                on_done=functools.partial(self._request_done, slot),
            )
            self._slots[name] = slot
        return slot

    def _request_done(self, slot: Slot) -> None:
        slot.last_used = time.monotonic()
        self._wake.set()

    def _state(self, slot: Slot) -> EngineState:
        if slot.engine is not None:
            return slot.engine.lifecycle.state
        if slot.phase is Phase.LOADING:
            return EngineState.STARTING
        return EngineState.FAILED if slot.error is not None else EngineState.STOPPED

    def _kind(self, slot: Slot) -> str:
        model = self._catalog.entries.get(slot.name)
        return model.engine if model is not None else "unknown"

    def _running(self, slot: Slot) -> int:
        return slot.engine.running if slot.engine is not None else 0

    def _waiting(self, slot: Slot) -> int:
        return len(slot.waiters) + slot.admission.waiting

    def _busy(self, slot: Slot) -> bool:
        """Running or queued requests (those queued after it began draining excepted)."""
        if slot.leases or slot.admission.in_flight or self._running(slot):
            return True
        since = slot.draining_since
        return any(since is None or arrival < since for arrival in slot.waiters)

    def _estimate(self, slot: Slot) -> int:
        if slot.memory:
            return slot.memory
        model = self._catalog.entries.get(slot.name)
        return weights_on_disk(self._home, model) if model is not None else 0

    def _memory(self, slot: Slot) -> int:
        if slot.engine is not None and slot.engine.lifecycle.ready:
            try:
                memory = slot.engine.info.memory
            except Exception:  # noqa: BLE001 - an engine between states; use the estimate
                memory = 0
            if memory:
                return memory
        return self._estimate(slot)

    def _restarting(self, slot: Slot) -> bool:
        """Its engine is restarting by itself after a crash (a supervised engine)."""
        engine = slot.engine
        return (
            engine is not None
            and slot.served
            and slot.phase is Phase.IDLE
            and engine.lifecycle.state is EngineState.STARTING
        )

    def _limits(self) -> Limits:
        return Limits(self._settings.max_loaded, self._settings.max_memory)

    def _residents(self) -> list[Resident]:
        out = []
        for slot in self._slots.values():
            if slot.engine is None and slot.phase is not Phase.LOADING:
                continue
            failed = slot.engine is not None and slot.engine.lifecycle.state is EngineState.FAILED
            out.append(
                Resident(
                    slot.name,
                    self._memory(slot),
                    # a failed engine goes first: it serves nobody
                    -1.0 if failed else slot.last_used,
                    self._busy(slot),
                    movable=slot.phase is Phase.IDLE and slot.engine is not None,
                )
            )
        return out

    def _publish(self, slot: Slot, state: str | None = None) -> None:
        """Tell the state listener (the crash watchdog) about a change, once."""
        state = state or self._state(slot).value
        if state == slot.published:
            return
        slot.published = state
        if self._on_state is not None:
            try:
                self._on_state(slot.name, self._kind(slot), state)
            except Exception:
                log.exception("the model state listener failed")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        self._wake.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _release_claim(self) -> None:
        self._swapping = None
        self._notify()

    # ---- the scheduler task -------------------------------------------------------------

    def _start_scheduler(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="router")

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = self._plan()
            except Exception:
                log.exception("router scheduler pass failed")
                delay = HOUSEKEEPING
            await wait_event(self._wake, max(0.01, delay))

    def _plan(self) -> float:
        """One pass: stale drains, loads for waiting requests (making room, grouping), idle
        unloads. Returns the seconds until the next deadline."""
        now = time.monotonic()
        settings = self._settings
        next_in = HOUSEKEEPING
        if self._swapping is None:
            for slot in self._slots.values():
                target = self._slots.get(slot.draining_for or "")
                if slot.draining_for is not None and (
                    target is None or not target.waiters or target.engine is not None
                ):
                    slot.draining_since = slot.draining_for = None
                    self._notify()
        wanting = sorted(
            (
                s
                for s in self._slots.values()
                if s.waiters and s.engine is None and s.phase is Phase.IDLE and s.error is None
            ),
            key=lambda s: min(s.waiters),
        )
        for slot in wanting:
            need = self._estimate(slot)
            gone = make_room(self._residents(), need, self._limits())
            if gone is not None:
                if not gone or self._swapping is None:
                    self._schedule_transition(gone, slot, dict.fromkeys(gone, "idle"))
                continue
            waited = now - min(slot.waiters)
            if waited < settings.swap_after:
                next_in = min(next_in, settings.swap_after - waited)
                continue
            if self._swapping is not None:
                continue
            gone = make_room(self._residents(), need, self._limits(), take_busy=True)
            if gone is None:
                continue  # the models in the way are loading or unloading: wait for them
            for name in gone:
                victim = self._slots[name]
                if victim.draining_for is None:
                    victim.draining_since, victim.draining_for = now, slot.name
            # Those in the way drain first; a finished request wakes the next pass.
            break
        if settings.idle_ttl:
            for slot in list(self._slots.values()):
                if slot.engine is None or slot.phase is not Phase.IDLE or self._busy(slot):
                    continue
                idle = now - slot.last_used
                if idle >= settings.idle_ttl:
                    self._start_unload(slot, f"unused for {idle:.0f}s (router.idle_ttl)")
                else:
                    next_in = min(next_in, settings.idle_ttl - idle)
        return next_in

    def _schedule_transition(self, gone: list[str], slot: Slot, why: dict[str, str]) -> None:
        for name in gone:
            victim = self._slots[name]
            if victim.draining_for == slot.name:
                why[name] = "drained"
        if gone:
            self._swapping, self._swapping_since = (
                f"swapping {', '.join(gone)} out for {slot.name}",
                time.monotonic(),
            )
        self._begin_transition(gone, slot, why)

        async def run() -> None:
            try:
                await self._transition(gone, slot)
            finally:
                if gone:
                    self._release_claim()

        self._spawn(run())

    def _begin_transition(self, gone: list[str], slot: Slot, why: dict[str, str]) -> None:
        """Mark the models that go and the one that comes (synchronously, so the next
        decision sees them), and log a swap once."""
        for name in gone:
            self._slots[name].phase = Phase.UNLOADING
            self._slots[name].unload_reason = why.get(name, "idle")
        slot.phase = Phase.LOADING
        self._publish(slot)
        if gone:
            self.swaps += 1
            log.info(
                "swapping %s out for %s: %d waiting for %s, %s",
                ", ".join(gone),
                slot.name,
                len(slot.waiters),
                slot.name,
                ", ".join(f"{n} {why.get(n, 'idle')}" for n in gone),
            )

    async def _transition(
        self, gone: list[str], slot: Slot
    ) -> tuple[list[tuple[str, float]], float | None]:
        unloaded: list[tuple[str, float]] = []
        try:
            for name in gone:
                victim = self._slots[name]
                started = time.perf_counter()
                why = f"making room for {slot.name} ({victim.unload_reason})"
                await self._unload_now(victim, why)
                unloaded.append((name, time.perf_counter() - started))
        except BaseException:
            slot.phase = Phase.IDLE
            self._notify()
            raise
        return unloaded, await self._load_now(slot)

    async def _drain(self, gone: list[str], target: str) -> dict[str, str]:
        """Stop ``gone`` taking new requests and wait until they have none (an operator's
        swap; bounded by ``router.load_timeout``)."""
        now = time.monotonic()
        why = {}
        for name in gone:
            victim = self._slots[name]
            why[name] = "drained" if self._busy(victim) else "idle"
            victim.draining_since, victim.draining_for = now, target
        deadline = now + self._settings.load_timeout
        while any(self._busy(self._slots[n]) for n in gone):
            changed = self._changed
            self._wake.set()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for name in gone:
                    self._slots[name].draining_since = self._slots[name].draining_for = None
                self._notify()
                raise ModelConflictError(
                    f"the models in the way of '{target}' ({', '.join(gone)}) still had "
                    f"requests after {self._settings.load_timeout:g}s; retry later",
                    param="model",
                )
            # Requests ending wake the scheduler, not this: poll gently.
            await wait_event(changed, min(remaining, 0.05))
        return why

    # ---- one load, one unload -----------------------------------------------------------

    def _start_unload(self, slot: Slot, why: str) -> asyncio.Task[Any]:
        slot.phase = Phase.UNLOADING
        return self._spawn(self._unload_now(slot, why))

    async def _load_now(self, slot: Slot) -> float | None:
        """Import, verify, build and start ``slot``'s engine (its phase is LOADING)."""
        started = time.perf_counter()
        error: str | None = None
        engine: Engine | None = None
        spec: ModelSpec | None = None
        try:
            # Bounded: a child that never answers must not hold the slot (and the one
            # change in progress) forever; cancelling start() kills what it started.
            async with asyncio.timeout(self._settings.load_timeout):
                model = self._catalog.get(slot.name)
                await asyncio.to_thread(prepare, self._home, model)
                verify_started = time.perf_counter()
                local = await asyncio.to_thread(
                    functools.partial(verify_local, require_signature=self._require_signature),
                    self._home,
                    model,
                )
                slot.verify_seconds = time.perf_counter() - verify_started
                spec = model_spec(model, local)
                engine = self._factory(spec)
                self._watch(slot, engine)
                slot.engine, slot.local, slot.served = engine, local, False
                await engine.start()
        except TimeoutError:
            limit = self._settings.load_timeout
            error = f"loading took longer than router.load_timeout ({limit:g}s)"
            log.error("model %s is not served: %s", slot.name, error)  # noqa: TRY400
        except BastionError as exc:
            error = exc.message
            log.error("model %s is not served: %s", slot.name, exc.message)  # noqa: TRY400
        except asyncio.CancelledError:
            if engine is not None:
                await asyncio.shield(self._close_engine(slot, engine))
            slot.phase = Phase.IDLE
            raise
        except Exception:
            error = "failed to load"
            log.exception("model %s failed to load", slot.name)
        seconds = time.perf_counter() - started
        if error is not None:
            if engine is not None:
                await self._close_engine(slot, engine)
            slot.error, slot.failed_at = error, time.monotonic()
        else:
            assert spec is not None  # noqa: S101 - set when no error
            slot.error, slot.load_seconds, slot.last_used = None, seconds, time.monotonic()
            slot.memory = self._memory(slot) or spec.weights_bytes
            slot.loads += 1
            log.info("model %s ready (sha256 %s) in %.2fs", slot.name, spec.digest, seconds)
        slot.phase = Phase.IDLE
        slot.draining_since = slot.draining_for = None
        self._publish(slot)
        self._notify()
        if self._webhook is not None:
            self._webhook.send(Event(slot.name, "load", seconds, error))
        return None if error is not None else seconds

    async def _close_engine(self, slot: Slot, engine: Engine) -> str | None:
        try:
            await engine.close()
        except Exception:
            log.exception("closing model %s's engine failed", slot.name)
            return "closing the engine failed"
        finally:
            if slot.engine is engine:
                slot.engine, slot.local = None, None
        return None

    async def _unload_now(self, slot: Slot, why: str) -> None:
        """Close ``slot``'s engine (its phase is UNLOADING)."""
        engine = slot.engine
        started = time.perf_counter()
        error = None
        try:
            if engine is not None:
                log.info("unloading model %s: %s", slot.name, why)
                error = await self._close_engine(slot, engine)
        finally:
            slot.phase = Phase.IDLE
            slot.draining_since = slot.draining_for = None
            slot.error = None
            self._publish(slot)
            self._notify()
        if engine is None:
            return
        slot.unloads += 1
        seconds = time.perf_counter() - started
        log.info("model %s unloaded in %.2fs", slot.name, seconds)
        if self._webhook is not None:
            self._webhook.send(Event(slot.name, "unload", seconds, error))

    def _watch(self, slot: Slot, engine: Engine) -> None:
        """Hear ``engine``'s transitions, from whatever thread makes them."""
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def heard(state: EngineState, reason: str) -> None:
            if threading.get_ident() == loop_thread:
                self._engine_moved(slot, engine, state)
                return
            # RuntimeError: the loop is closed, the server is gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._engine_moved, slot, engine, state)

        engine.lifecycle.listen(heard)

    def _engine_moved(self, slot: Slot, engine: Engine, state: EngineState) -> None:
        if slot.engine is not engine:
            return
        if state is EngineState.READY:
            slot.served = True
        self._publish(slot, state.value)
        if state is EngineState.STOPPED and slot.phase is Phase.IDLE and not self._closing:
            # It stopped by itself: drop it, so that the next request loads it again.
            self._start_unload(slot, "its engine stopped")
        self._notify()

    async def _close_all(self) -> None:
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._webhook is not None:
            await self._webhook.close()
        for slot in self._slots.values():
            if slot.engine is not None:
                await self._close_engine(slot, slot.engine)
            slot.phase = Phase.IDLE
            self._publish(slot)
