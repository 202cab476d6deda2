"""The model registry: every catalog model, loaded on demand, unloaded when idle or to make room.

A model's state is its engine's lifecycle (``stopped, starting, ready, stopping, failed``); a
model without an engine is ``stopped``, or ``failed`` when its import or verification failed.
Requests ``acquire`` a model: a ready one answers at once, a stopped one is loaded while the
request waits (up to ``router.load_timeout``), a failed one answers 503 with Retry-After.

``router.max_loaded`` and ``router.max_memory`` bound what is loaded; the scheduler (one task,
``router/scheduler.py``) unloads the least recently used idle models to make room, groups
interleaved requests into few swaps (``router.swap_after``) and unloads models idle for
``router.idle_ttl``. A model with running or queued requests is never unloaded.

    registry = ModelRegistry(home, catalog, "smollm2-135m-instruct", factory, settings.router)
    registry.start()                      # preloads in the background
    served = await registry.acquire("gemma3-270m")
    try:
        async for chunk in served.generate(params): ...
    finally:
        served.release()
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.catalog import Catalog
from bastion.engine.base import Engine, EngineState, ModelSpec
from bastion.errors import (
    BastionError,
    ModelConflictError,
    ModelLoadError,
    ModelNotFoundError,
    ModelUnavailableError,
    SwapInProgressError,
    TooManyRequestsError,
)
from bastion.router.placement import make_room
from bastion.router.scheduler import RETRY_FAILED, Scheduler
from bastion.router.served import ServedModel
from bastion.router.slot import Phase, Slot, wait_event
from bastion.router.webhook import Webhook
from bastion.settings import RouterSettings

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec], Engine]
"""Builds an (unstarted) engine for a model; the app binds the engine settings."""

StateListener = Callable[[str, str, str], None]
"""Hears ``(model, engine kind, state)`` on every state change of a model."""

__all__ = ["EngineFactory", "ModelRegistry", "ServedModel", "StateListener"]

RETRY_RESTARTING = 5
"""Least Retry-After (seconds) of a model whose engine restarts after a crash; its last load
time when that was longer (a restart is a load)."""


def describe_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


class ModelRegistry(Scheduler):
    def __init__(
        self,
        home: Path,
        catalog: Catalog,
        default_model: str,
        factory: EngineFactory,
        settings: RouterSettings,
        *,
        require_signature: bool = True,
        on_state: StateListener | None = None,
        webhook: Webhook | None = None,
    ) -> None:
        super().__init__(
            home,
            catalog,
            factory,
            settings,
            require_signature=require_signature,
            on_state=on_state,
            webhook=webhook if webhook is not None else Webhook.from_settings(settings),
        )
        self._default = default_model
        self._preload_names = list(
            settings.preload if settings.preload is not None else [default_model]
        )
        self._preload: asyncio.Task[None] | None = None

    @property
    def default_model(self) -> str:
        return self._default

    @property
    def settings(self) -> RouterSettings:
        return self._settings

    # ---- start and stop ---------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler and load ``router.preload`` in the background (call on the
        event loop; ``/health`` answers at once, ``/ready`` once the preloads are done)."""
        self._start_scheduler()
        self._preload = asyncio.get_running_loop().create_task(
            self._preload_all(), name="router-preload"
        )

    async def _preload_all(self) -> None:
        for name in self._preload_names:
            if name not in self._catalog.entries:
                log.error("router.preload names '%s', which is not in the catalog", name)
                continue
            try:
                await self.load(name, wait_turn=True)
            except BastionError as exc:
                log.error("preloading model %s: %s", name, exc.message)  # noqa: TRY400

    async def wait_loaded(self) -> None:
        """Wait for the preloads (tests, and the self-test) to finish, failed or not."""
        if self._preload is not None:
            await asyncio.gather(self._preload, return_exceptions=True)

    async def close(self) -> None:
        if self._preload is not None and not self._preload.done():
            self._preload.cancel()
        await self.wait_loaded()
        await self._close_all()

    # ---- requests ---------------------------------------------------------------------

    def _known(self, name: str) -> Slot:
        if name not in self._catalog.entries and name not in self._slots:
            raise ModelNotFoundError(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
            )
        return self._slot(name)

    def acquire_nowait(self, name: str | None) -> ServedModel | None:
        """A ready model at once (404 for an unknown name); None when ``acquire`` would
        wait for it or refuse it."""
        slot = self._known(name or self._default)
        now = time.monotonic()
        slot.last_used = now
        return self._try_serve(slot, now)

    async def acquire(self, name: str | None) -> ServedModel:
        """The model serving ``name`` (the default model when None), loading it if needed.
        The caller must ``release()`` what it gets once its response has started."""
        slot = self._known(name or self._default)
        arrival = time.monotonic()
        slot.last_used = arrival
        served = self._try_serve(slot, arrival)
        if served is not None:
            return served
        self._check_failed(slot, None)
        self._check_fits(slot)
        queued = len(slot.waiters) + slot.admission.waiting
        if queued >= self._settings.max_queue:
            raise TooManyRequestsError(
                f"The server is busy: {queued} requests are waiting for the model "
                f"'{slot.name}'. Retry later.",
                retry_after=max(1, math.ceil(self._settings.swap_after)),
            )
        slot.waiters.append(arrival)
        self._wake.set()
        deadline = arrival + self._settings.load_timeout
        try:
            while True:
                changed = self._changed
                served = self._try_serve(slot, arrival)
                if served is not None:
                    return served
                self._check_failed(slot, arrival)
                self._check_fits(slot)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ModelUnavailableError(
                        f"The model '{slot.name}' did not become ready within "
                        f"{self._settings.load_timeout:g} seconds (it is "
                        f"{self._state(slot).value}). Retry later.",
                        retry_after=5,
                    )
                await wait_event(changed, remaining)
        finally:
            slot.waiters.remove(arrival)
            self._wake.set()

    def _try_serve(self, slot: Slot, arrival: float) -> ServedModel | None:
        engine, local = slot.engine, slot.local
        if engine is None or local is None or slot.phase is not Phase.IDLE:
            return None
        if not engine.lifecycle.ready:
            return None
        # A draining model serves those queued before it began to drain, not later arrivals.
        if slot.draining_since is not None and arrival >= slot.draining_since:
            return None
        slot.leases += 1

        def release() -> None:
            slot.leases -= 1
            slot.last_used = time.monotonic()
            self._wake.set()

        return ServedModel(engine, slot.admission, local, release)

    def _check_failed(self, slot: Slot, waiting_since: float | None) -> None:
        """Raise 503 for a failed model, or one restarting after a crash. A failure older
        than ``RETRY_FAILED``, or a restart longer than ``router.load_timeout``, is retried:
        the model is unloaded and the request waits for it to load again."""
        now = time.monotonic()
        engine = slot.engine
        if engine is not None and slot.phase is not Phase.IDLE:
            return  # being loaded, or replaced (a retry, an operator's load): wait for it
        if engine is not None and engine.lifecycle.state is EngineState.FAILED:
            age = now - engine.lifecycle.since
            if age >= RETRY_FAILED and not self._busy(slot):
                self._start_unload(slot, "failed; reloading on demand")
                return
            self._refuse(slot, RETRY_FAILED - age)
        if engine is not None and self._restarting(slot):
            limit = self._settings.load_timeout
            if now - engine.lifecycle.since >= limit and not self._busy(slot):
                why = f"its restart took longer than router.load_timeout ({limit:g}s); reloading"
                self._start_unload(slot, why)
                return
            raise ModelUnavailableError(
                f"The model '{slot.name}' is restarting after its engine failed. Retry in a "
                "few seconds.",
                retry_after=max(RETRY_RESTARTING, math.ceil(slot.load_seconds or 0)),
            )
        if engine is None and slot.error is not None:
            if waiting_since is not None and slot.failed_at >= waiting_since:
                self._refuse(slot, RETRY_FAILED)
            if now - slot.failed_at < RETRY_FAILED:
                self._refuse(slot, RETRY_FAILED - (now - slot.failed_at))
            slot.error = None  # long enough ago: try again
            self._publish(slot)

    def _check_fits(self, slot: Slot) -> None:
        """Raise 503 at once for a model bigger than ``router.max_memory`` on its own."""
        limit, need = self._settings.max_memory, self._estimate(slot)
        if limit and need > limit:
            raise ModelUnavailableError(
                f"The model '{slot.name}' needs about {describe_size(need)} of memory, more "
                f"than router.max_memory ({describe_size(limit)}) allows with no other model "
                "loaded: it cannot be served until an operator raises router.max_memory.",
                param="model",
            )

    def _refuse(self, slot: Slot, retry_in: float) -> None:
        # The reason (paths, digests) is for operators, not for callers: say where it is.
        raise ModelUnavailableError(
            f"The model '{slot.name}' is not available (failed). Operators: the reason is "
            "in the server log and at GET /api/status.",
            retry_after=max(1, math.ceil(retry_in)),
        )

    # ---- operators: load, unload, swap ------------------------------------------------

    def _claim(self, what: str) -> None:
        if self._swapping is not None:
            raise SwapInProgressError(
                f"another change is in progress: {self._swapping} (for "
                f"{time.monotonic() - self._swapping_since:.0f}s); retry when it is done",
                param="model",
            )
        self._swapping, self._swapping_since = what, time.monotonic()

    async def load(self, name: str, *, wait_turn: bool = False) -> dict[str, Any]:
        """Load ``name`` now, unloading least recently used idle models if it does not fit
        (409 when only busy models could make room: ``swap`` drains them)."""
        slot = self._known(name)
        if wait_turn:
            while self._swapping is not None:
                await self._changed.wait()
        self._claim(f"loading {name}")
        try:
            if not await self._settle(slot):
                return self._result(slot, [], None)
            self._check_fits(slot)
            gone = make_room(self._residents(), self._estimate(slot), self._limits())
            if gone is None:
                raise ModelConflictError(
                    f"no room to load '{name}' within router.max_loaded/max_memory without "
                    f"unloading models that are busy or changing; POST /api/swap drains them",
                    param="model",
                )
            return await self._run_transition(gone, slot, {})
        finally:
            self._release_claim()

    async def swap(self, name: str) -> dict[str, Any]:
        """Load ``name``, unloading what must go to make room; busy models first stop taking
        requests and finish their queue. One change at a time: 409 while another runs."""
        slot = self._known(name)
        self._claim(f"swapping in {name}")
        try:
            if not await self._settle(slot):
                return self._result(slot, [], None)
            self._check_fits(slot)
            need = self._estimate(slot)
            gone = make_room(self._residents(), need, self._limits())
            if gone is None:
                gone = make_room(self._residents(), need, self._limits(), take_busy=True)
            if gone is None:
                raise ModelConflictError(
                    f"the models in the way of '{name}' are loading or unloading; retry later",
                    param="model",
                )
            why = await self._drain(gone, name)
            # Things moved while they drained: settle again, then take what is idle now.
            ready = not await self._settle(slot)
            after = None if ready else make_room(self._residents(), need, self._limits())
            if ready or after is None:
                for victim in gone:
                    self._slots[victim].draining_since = self._slots[victim].draining_for = None
                if ready:
                    return self._result(slot, [], None)
                raise ModelConflictError(
                    f"the room made for '{name}' was taken meanwhile; retry", param="model"
                )
            return await self._run_transition(after, slot, why)
        finally:
            self._release_claim()

    async def unload(self, name: str) -> dict[str, Any]:
        """Unload ``name``; 409 while it has running or queued requests."""
        slot = self._known(name)
        self._claim(f"unloading {name}")
        try:
            if slot.phase is not Phase.IDLE:
                raise ModelConflictError(
                    f"'{name}' is {self._state(slot).value}; retry when that is done",
                    param="model",
                )
            if slot.engine is None:
                return self._result(slot, [], None)
            if self._busy(slot):
                raise ModelConflictError(
                    f"'{name}' has {self._running(slot)} running and {self._waiting(slot)} "
                    "queued requests; it is unloaded only when idle",
                    param="model",
                )
            started = time.perf_counter()
            await asyncio.shield(self._start_unload(slot, "unloaded by an operator"))
            return self._result(slot, [(name, time.perf_counter() - started)], None)
        finally:
            self._release_claim()

    async def _settle(self, slot: Slot) -> bool:
        """Wait for a load or unload of ``slot`` in progress; clear a failure so it loads
        again. False when it is ready already (nothing to do)."""
        limit = self._settings.load_timeout
        deadline = time.monotonic() + limit
        while True:
            while slot.phase is not Phase.IDLE:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ModelConflictError(
                        f"'{slot.name}' is still {self._state(slot).value} after {limit:g}s "
                        "(router.load_timeout); retry later",
                        param="model",
                    )
                await wait_event(self._changed, remaining)
            engine = slot.engine
            if engine is None:
                break
            state = engine.lifecycle.state
            if state is EngineState.READY:
                return False
            if state is EngineState.STARTING and time.monotonic() < deadline:
                # a supervised engine restarting by itself
                await wait_event(self._changed, 1.0)
                continue
            await asyncio.shield(self._start_unload(slot, f"{state.value}; reloading"))
            break
        slot.error = None
        slot.draining_since = slot.draining_for = None
        return slot.engine is None or not slot.engine.lifecycle.ready

    async def _run_transition(
        self, gone: list[str], slot: Slot, why: dict[str, str]
    ) -> dict[str, Any]:
        self._begin_transition(gone, slot, why)
        unloaded, loaded = await asyncio.shield(self._spawn(self._transition(gone, slot)))
        if slot.error is not None:
            # Operators called this: the reason is theirs to read.
            raise ModelLoadError(f"model '{slot.name}' failed to load: {slot.error}")
        return self._result(slot, unloaded, loaded)

    def _result(
        self, slot: Slot, unloaded: list[tuple[str, float]], loaded: float | None
    ) -> dict[str, Any]:
        return {
            "model": slot.name,
            "state": self._state(slot).value,
            "loaded": None if loaded is None else {"model": slot.name, "seconds": round(loaded, 3)},
            "unloaded": [{"model": n, "seconds": round(s, 3)} for n, s in unloaded],
        }

    # ---- reporting --------------------------------------------------------------------

    def states(self, *, detail: bool = False) -> dict[str, dict[str, object]]:
        """Every catalog model (and any loaded one since removed from it): state, running,
        waiting, load and verify seconds, memory, last use; with ``detail`` (operators
        only) also the reason for the state, which may name files on the server."""
        names = list(self._catalog.entries)
        names += [n for n, s in self._slots.items() if n not in names and s.engine is not None]
        out: dict[str, dict[str, object]] = {}
        for name in names:
            slot = self._slot(name)
            engine = slot.engine
            state: dict[str, object] = {
                "state": self._state(slot).value,
                "engine": self._kind(slot),
                "running": self._running(slot),
                "waiting": self._waiting(slot),
                "load_seconds": slot.load_seconds,
                "verify_seconds": slot.verify_seconds,
                "memory": self._memory(slot) if engine is not None else 0,
                "last_used": slot.last_used_wall(),
                "draining": slot.draining_since is not None,
                "loads": slot.loads,
                "unloads": slot.unloads,
            }
            if detail:
                reason = engine.lifecycle.reason if engine is not None else slot.error
                state["reason"] = reason or "not loaded"
                failed = state["state"] == EngineState.FAILED.value
                state["error"] = reason if failed else None
            out[name] = state
        return out

    def card(self, name: str) -> ServedModel | None:
        """The loaded model ``name`` for its model card, or None when it is not loaded."""
        slot = self._slots.get(name)
        if slot is None or slot.engine is None or slot.local is None:
            return None
        return ServedModel(slot.engine, slot.admission, slot.local)

    @property
    def swapping(self) -> str | None:
        """The load, unload or swap in progress, if any."""
        return self._swapping

    @property
    def ready(self) -> bool:
        """The preloads are done and none of the preloaded models failed or is restarting
        after a crash. A preloaded model
        that the router unloaded since (idle, or swapped out) still counts: it loads again
        on demand."""
        if self._preload is None or not self._preload.done():
            return False
        for name in self._preload_names:
            if name not in self._catalog.entries:
                return False
            slot = self._slot(name)
            if self._state(slot) is EngineState.FAILED or self._restarting(slot):
                return False
        return True
