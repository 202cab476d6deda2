"""``IsolatedEngine``: the embedded engine in a supervised child process, seen from the API
process as any other engine (see the package docstring for the shape)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from bastion.engine.base import (
    Chunk,
    EngineState,
    GenerationParams,
    ModelInfo,
    ModelSpec,
)
from bastion.engine.isolation import wire
from bastion.engine.isolation.process import EngineProcess, describe_exit
from bastion.engine.lifecycle import Lifecycle
from bastion.errors import BastionError, EngineError, ModelLoadError, ServiceUnavailableError
from bastion.log import request_id_var
from bastion.settings import EngineSettings

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
"""Longest wait before a restart."""
STABLE_AFTER = 60.0
"""Seconds a restarted process must serve before its crash counts as the first again."""
CLOSE_GRACE = 10.0
"""Seconds a closing engine process may take to finish before SIGTERM (the API has drained
its requests by then); SIGKILL follows after ``KILL_AFTER`` more."""
KILL_AFTER = 5.0
RESTART_WITHIN = 600.0
"""Seconds a restarted engine process may take to load before it is killed and the restart
counts as another crash (the router's load_timeout bounds first loads)."""
RETRY_LOADING = 2
"""Seconds a 503 for an engine that is (re)loading asks clients to wait (Retry-After)."""
RETRY_SHUTDOWN = 5
"""Seconds a 503 for an engine that is closing asks clients to wait (a restart, a reload)."""
MAX_UNSENT = 32 * 1024 * 1024
"""Bytes of requests the engine process may leave unread on its channel before new requests
get a 503: a wedged process must not grow the API process's memory without bound."""

_Item = Chunk | BastionError | None


@dataclass(eq=False)
class _Stream:
    """One generation in flight: what the channel delivered for it, in order."""

    out: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    started: bool = False


class _ChildDiedError(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class IsolatedEngine:
    """The llama.cpp engine in its own process; the API process keeps the queue, admission
    and supervision. Bound to the event loop that calls ``start``."""

    def __init__(self, spec: ModelSpec, settings: EngineSettings) -> None:
        self._spec = spec
        self._settings = settings
        self.lifecycle = Lifecycle(spec.name, "llamacpp")
        self._info = ModelInfo(spec.name, spec.digest, 0, 0, chat=not spec.completion_only)
        self._child: EngineProcess | None = None
        self._reader: asyncio.Task[None] | None = None
        self._restarter: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._running = 0
        self._restarts = 0
        self._up_since = 0.0
        self._closing = False

    # ---- the Engine protocol ------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def running(self) -> int:
        """Sequences the engine process is decoding, as it last reported."""
        return self._running

    @property
    def pid(self) -> int | None:
        """The engine process's pid while one runs (operators, tests)."""
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        if self._closing:
            raise self._unavailable()
        self.lifecycle.move(EngineState.STARTING, "starting its engine process")
        try:
            child = await self._spawn()
        except asyncio.CancelledError:  # the caller gave up waiting (its child is gone)
            self._settle(EngineState.STOPPED, "loading was cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - every failure to start is a failed load
            error = self._start_error(exc)
            self._settle(EngineState.FAILED, error.message)
            raise error from None
        if self._closing:  # closed while it loaded: close() found no child to stop
            await _end(child)
            raise self._unavailable()
        self._serve(child, "loaded in its engine process")

    def _start_error(self, exc: Exception) -> BastionError:
        if isinstance(exc, _ChildDiedError):
            return ModelLoadError(
                f"model '{self._spec.name}': the engine process {exc.status} while loading"
            )
        if isinstance(exc, BastionError):
            return exc
        log.error("starting the engine process of %s failed: %r", self._spec.name, exc)
        return ModelLoadError(f"model '{self._spec.name}': its engine process could not start")

    def _settle(self, state: EngineState, reason: str) -> None:
        """A failed start's state, unless a close (which owns the state now) began meanwhile."""
        if not self._closing:
            self.lifecycle.move(state, reason)

    async def generate(self, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        child = self._child
        if child is None or not self.lifecycle.ready or self._closing:
            raise self._unavailable()
        if child.unsent > MAX_UNSENT:  # the process is not reading its requests
            raise ServiceUnavailableError(
                f"the engine of model '{self._spec.name}' is not taking requests; "
                "retry in a few seconds",
                retry_after=RETRY_LOADING,
            )
        request = next(self._ids)
        stream = self._streams[request] = _Stream()
        child.send(["g", request, request_id_var.get(), wire.encode_params(params)])
        try:
            while (item := await stream.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                stream.started = True
                yield item
        finally:
            # Still listed: the client went away mid-generation; the child stops decoding it.
            if self._streams.pop(request, None) is not None and child is self._child:
                child.send(["k", request])

    async def close(self) -> None:
        """End the engine process (SIGTERM, then SIGKILL, if it does not exit in time). One
        close runs however many callers wait for it, and a caller that is cancelled does not
        cancel it."""
        if self._closer is None:
            self._closing = True
            self._closer = asyncio.create_task(self._close(), name=f"close-{self._spec.name}")
        await asyncio.shield(self._closer)

    async def _close(self) -> None:
        self.lifecycle.move(EngineState.STOPPING, "closing")
        try:
            if self._restarter is not None:
                self._restarter.cancel()
                await asyncio.wait([self._restarter])  # our own cancellation still propagates
            child, self._child = self._child, None
            if child is not None:
                code = await _end(child)
                log.info(
                    "engine process %d of %s %s", child.pid, self._spec.name, describe_exit(code)
                )
            if self._reader is not None:
                await asyncio.wait([self._reader])
        finally:
            self._fail_streams(lambda _: self._unavailable())
            self._running = 0
            self.lifecycle.move(EngineState.STOPPED, "closed")

    # ---- the child process --------------------------------------------------------------

    async def _spawn(self) -> EngineProcess:
        """A child that loaded the model; the load's own error, or ``_ChildDiedError``."""
        child = await EngineProcess.spawn(self._spec.name)
        try:
            reply = await self._handshake(child)
            info = _loaded(reply)
        except wire.ProtocolError as exc:
            log.error("engine process %d of %s: %s", child.pid, self._spec.name, exc)  # noqa: TRY400
            await _kill(child)
            raise _ChildDiedError("sent a malformed answer") from None
        except BaseException:
            await _kill(child)
            raise
        if info is None:
            await _end(child)
            raise _load_error(reply)
        self._info = info
        return child

    async def _handshake(self, child: EngineProcess) -> list[Any]:
        child.send(["init", wire.encode_spec(self._spec), self._settings.model_dump(mode="json")])
        try:
            return await wire.read_frame(child.reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await child.exit_status()
            raise _ChildDiedError(describe_exit(code)) from None

    def _serve(self, child: EngineProcess, reason: str) -> None:
        self._child = child
        self._up_since = time.monotonic()
        self._reader = asyncio.create_task(self._read(child), name=f"engine-{self._spec.name}")
        self.lifecycle.move(EngineState.READY, f"{reason} (pid {child.pid})")

    async def _read(self, child: EngineProcess) -> None:
        """Deliver the child's frames until its channel closes, then supervise. A frame it
        cannot read means a broken process: it is killed and handled as a crash."""
        try:
            while True:
                self._deliver(await wire.read_frame(child.reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # noqa: BLE001 - whatever it sent, the reader must not die
            what = str(exc) if isinstance(exc, wire.ProtocolError) else type(exc).__name__
            log.error(  # noqa: TRY400 - no traceback: it could quote what the process sent
                "engine process %d of %s sent %s; killing it", child.pid, self._spec.name, what
            )
            child.kill()
        if self._closing or child is not self._child:
            return
        await self._crashed(child)

    def _deliver(self, message: list[Any]) -> None:
        kind = wire.check_child_frame(message)
        if kind == "c":
            chunk = wire.decode_chunk(message)
            self._running = message[8]
            stream = self._streams.get(message[1])
            if stream is not None:
                stream.out.put_nowait(chunk)
        elif kind == "e":
            self._running = message[2]
            stream = self._streams.pop(message[1], None)
            if stream is not None:
                stream.out.put_nowait(None)
        elif kind == "x":
            error = wire.decode_error(message[2])
            stream = self._streams.pop(message[1], None)
            if stream is not None:
                stream.out.put_nowait(error)
        else:
            self._running = message[1]

    async def _crashed(self, child: EngineProcess) -> None:
        """The child died under its requests: mark the engine failed and fail them at once,
        then restart or give up."""
        self._child = None
        self._running = 0
        code = await child.exit_status(within=0.5)  # at EOF it has exited, or is exiting
        if code is None:  # closed its channel but lives on: it is of no use any more
            child.kill()
            code = await child.exit_status()
        child.close_channel()
        if self._closing:
            return
        status = describe_exit(code)
        if time.monotonic() - self._up_since >= STABLE_AFTER:
            self._restarts = 0
        self.lifecycle.move(EngineState.FAILED, f"the engine process (pid {child.pid}) {status}")
        self._fail_streams(self._crash_error)
        self._schedule_restart(status)

    def _schedule_restart(self, status: str) -> None:
        limit = self._settings.restart_limit
        if self._closing:
            return
        if self._restarts >= limit:
            log.error(
                "model %s: no restarts left (restart_limit %d); it stays failed. "
                "Last exit of its engine process: %s",
                self._spec.name,
                limit,
                status,
            )
            return
        self._restarts += 1
        delay = self._backoff()
        self.lifecycle.move(
            EngineState.STARTING,
            f"restart {self._restarts} of {limit} in {delay:.1f}s (its engine process {status})",
        )
        self._restarter = asyncio.create_task(
            self._restart(delay), name=f"restart-{self._spec.name}"
        )

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            # Cancelling a spawn kills its process: a restart that hangs counts as a crash.
            async with asyncio.timeout(RESTART_WITHIN):
                child = await self._spawn()
        except TimeoutError:
            status = f"did not load within {RESTART_WITHIN:g}s"
            self.lifecycle.move(EngineState.FAILED, f"the engine process {status}")
            self._schedule_restart(status)
            return
        except _ChildDiedError as exc:
            self.lifecycle.move(
                EngineState.FAILED, f"the engine process {exc.status} while loading"
            )
            self._schedule_restart(exc.status)
            return
        except BastionError as exc:  # the model itself no longer loads: restarting won't help
            self.lifecycle.move(EngineState.FAILED, exc.message)
            return
        except Exception:
            log.exception("restarting the engine process of %s failed", self._spec.name)
            self.lifecycle.move(EngineState.FAILED, "its engine process could not be started")
            return
        if self._closing:
            await _end(child)
            return
        self._serve(child, f"restarted after a crash ({self._restarts} of this run)")

    # ---- helpers ------------------------------------------------------------------------

    def _crash_error(self, stream: _Stream) -> BastionError:
        if stream.started:
            return EngineError("the engine process failed; the response is incomplete")
        return ServiceUnavailableError(
            f"the engine of model '{self._spec.name}' failed before answering; "
            "it is restarting, retry in a few seconds",
            retry_after=self._retry_after(),
        )

    def _fail_streams(self, error: Callable[[_Stream], BastionError]) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.out.put_nowait(error(stream))

    def _unavailable(self) -> ServiceUnavailableError:
        state = self.lifecycle.state
        if self._closing:
            return ServiceUnavailableError(
                "the server is shutting down", retry_after=RETRY_SHUTDOWN
            )
        if state is EngineState.STARTING and self._restarts:
            return ServiceUnavailableError(
                f"the engine of model '{self._spec.name}' is restarting after a crash; "
                "retry in a few seconds",
                retry_after=self._retry_after(),
            )
        if state is EngineState.STARTING:
            return ServiceUnavailableError(
                f"model '{self._spec.name}' is still loading", retry_after=RETRY_LOADING
            )
        return ServiceUnavailableError(
            f"model '{self._spec.name}' is not available", retry_after=RETRY_LOADING
        )

    def _backoff(self) -> float:
        """The wait before the current restart: ``restart_backoff`` doubling per crash."""
        exponent = max(0, self._restarts - 1)
        return min(self._settings.restart_backoff * 2.0**exponent, MAX_BACKOFF)

    def _retry_after(self) -> int:
        """Seconds until the restart under way is likely serving: its backoff plus a load."""
        return max(1, math.ceil(self._backoff())) + RETRY_LOADING


async def _end(child: EngineProcess) -> int | None:
    """Stop a child in order; cancelled midway, it is killed all the same."""
    try:
        return await child.stop(CLOSE_GRACE, KILL_AFTER)
    finally:
        if child.process.poll() is None:
            child.kill()
        child.close_channel()


async def _kill(child: EngineProcess) -> None:
    if child.process.poll() is None:
        child.kill()
        await child.exit_status()
    child.close_channel()


def _loaded(reply: list[Any]) -> ModelInfo | None:
    """The model's info from the child's answer to ``init``; None for a load error."""
    if reply[0] == "loaded" and len(reply) == 2:
        return wire.decode_info(reply[1])
    if reply[0] == "load_error":
        return None
    raise wire.ProtocolError(f"an answer to init named {reply[0][:16]!r}")


def _load_error(reply: list[object]) -> ModelLoadError:
    """The child's answer to ``init`` when it is not "loaded", as a ModelLoadError."""
    data = reply[1] if reply[0] == "load_error" and len(reply) > 1 else {}
    error = wire.decode_error(data if isinstance(data, dict) else {})
    return error if isinstance(error, ModelLoadError) else ModelLoadError(error.message)
