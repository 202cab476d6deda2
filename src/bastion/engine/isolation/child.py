"""The engine process: loads one model with the in-process engine and serves it over its
channel to the API process (``python -m bastion.engine.isolation.child --fd N ...``).

It lives only as long as its parent: the kernel kills it when the parent dies
(``PR_SET_PDEATHSIG``) and it exits when its channel reaches EOF. A native crash here kills
this process only; the parent sees the channel close and restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bastion.engine.base import Chunk, Engine, EngineState, GenerationParams
from bastion.engine.isolation import wire
from bastion.errors import BastionError, EngineError, ModelLoadError
from bastion.log import configure_logging, request_id_var
from bastion.settings import EngineSettings

if TYPE_CHECKING:
    from bastion.engine.llamacpp.requests import Item, Request, Sink

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
RUNNING_POLL = 0.05
"""Seconds between checks of the running count while generations are in flight (a cancelled
sequence leaves its slot without a frame of its own)."""
ENGINE_DIED = 70
"""Exit status when the engine's owner thread died while the process lived."""


@runtime_checkable
class Submits(Protocol):
    """An engine that hands a generation's output to a sink (the embedded llama.cpp one)."""

    async def submit(self, params: GenerationParams, sink: Sink | None = None) -> Request: ...


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel sends SIGKILL when the parent goes; elsewhere EOF on the channel."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


class Server:
    """Serves one engine to the parent, frames in and out.

    An engine that ``Submits`` hands each step's output of all its streams to ``deliver`` on
    its owner thread; one callback on this loop writes it as frames in one write, so a step
    costs this process one short wake-up whatever the number of streams. Any other engine
    gets a task per generation that forwards its chunks.
    """

    def __init__(
        self, engine: Engine, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._engine = engine
        self._reader = reader
        self._writer = writer
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._direct: dict[Request, int] = {}
        """Generations queued in a ``Submits`` engine -> the parent's id for them."""
        self._queued: dict[int, Request] = {}
        """The same, the other way round."""
        self._answered = asyncio.Event()
        """Set while ``_direct`` is empty."""
        self._answered.set()
        self._loop = asyncio.get_running_loop()
        self._running = 0
        self._active = asyncio.Event()
        self._failed = asyncio.Event()

    def send(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    def watch_engine(self) -> None:
        """A dead owner thread ends the process, so the parent restarts it."""
        loop = asyncio.get_running_loop()

        def heard(state: EngineState, reason: str) -> None:
            if state is EngineState.FAILED:
                loop.call_soon_threadsafe(self._failed.set)

        self._engine.lifecycle.listen(heard)

    async def serve(self) -> int:
        poller = asyncio.create_task(self._poll_running())
        reading = asyncio.create_task(self._read())
        failed = asyncio.create_task(self._failed.wait())
        try:
            await asyncio.wait((reading, failed), return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                log.error("the engine of %s failed; its process exits", self._engine.info.name)
                await self._settle(1)  # let the errors the engine gave its requests go out
                return ENGINE_DIED
            closing = reading.result()
            if closing and (self._tasks or self._direct):
                # As an in-process engine closes: what still runs ends with "shutting down"
                # (the router and the server drain requests before they close an engine).
                await self._engine.close()
                await self._settle(5)
            return 0
        finally:
            for task in (poller, reading, failed, *self._tasks.values()):
                task.cancel()
            await asyncio.gather(
                poller, reading, failed, *self._tasks.values(), return_exceptions=True
            )
            await self._flush()

    async def _read(self) -> bool:
        """Take requests until close (True) or EOF (False: the parent is gone)."""
        while True:
            try:
                message = await wire.read_frame(self._reader)
            except (asyncio.IncompleteReadError, ConnectionError, wire.ProtocolError):
                return False
            kind = message[0]
            if kind == "g":
                request = int(message[1])
                try:
                    params = wire.decode_params(message[3])
                except (KeyError, TypeError, ValueError):
                    log.exception("a request the engine process cannot read")
                    error = EngineError("the engine could not read the request")
                    self.send(wire.frame(["x", request, wire.encode_error(error)]))
                    continue
                task = asyncio.create_task(self._generate(request, str(message[2]), params))
                self._tasks[request] = task
                self._active.set()
            elif kind == "k":
                # A task cancelled before it ever ran skips its own cleanup: forget it here.
                cancelled = self._tasks.pop(int(message[1]), None)
                if cancelled is not None:
                    cancelled.cancel()
                queued = self._queued.get(int(message[1]))
                if queued is not None:
                    queued.cancelled = True  # leaves its slot at the next step, silently
                    self._forget(queued)
            elif kind == "q":
                return True

    async def _generate(self, request: int, request_id: str, params: GenerationParams) -> None:
        request_id_var.set(request_id)  # this task's own context: the engine logs with it
        if isinstance(self._engine, Submits):
            try:
                queued = await self._engine.submit(params, self)
            except asyncio.CancelledError:
                pass  # the parent forgot this request already
            except Exception as exc:  # noqa: BLE001 - goes to the parent (logged there)
                self.send(_error_frame(request, exc))
            else:  # before any output: deliver's callbacks run on this loop, after this
                self._direct[queued] = request
                self._queued[request] = queued
                self._answered.clear()
            finally:
                self._tasks.pop(request, None)
            return
        chunks: AsyncGenerator[Chunk, None] = self._engine.generate(params)
        try:
            async for chunk in chunks:
                self._running = self._engine.running
                self.send(wire.chunk_frame(request, chunk, self._running))
            self._running = self._engine.running
            self.send(wire.frame(["e", request, self._running]))
        except asyncio.CancelledError:
            pass  # the parent forgot this request already
        except Exception as exc:  # noqa: BLE001 - goes to the parent (logged there)
            self.send(_error_frame(request, exc))
        finally:
            await chunks.aclose()  # marks the sequence cancelled if it still runs
            self._tasks.pop(request, None)
        await self._drain_if_full()

    def deliver(self, items: list[tuple[Request, Item]]) -> None:
        """``Sink`` for a ``Submits`` engine: called on its owner thread with a step's output."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(self._write, items)

    def _write(self, items: list[tuple[Request, Item]]) -> None:
        """A step's output as frames, in order, in one write."""
        running = self._engine.running
        frames = []
        for queued, item in items:
            request = self._direct.get(queued)
            if request is None:
                continue  # cancelled by the parent
            if isinstance(item, Chunk):
                frames.append(wire.chunk_frame(request, item, running))
                continue
            self._forget(queued)
            if item is None:
                frames.append(wire.frame(["e", request, running]))
            else:
                frames.append(_error_frame(request, item))
        if frames:
            self._running = running
            self.send(b"".join(frames))

    def _forget(self, queued: Request) -> None:
        del self._queued[self._direct.pop(queued)]
        if not self._direct:
            self._answered.set()

    async def _settle(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the generations in flight to be answered."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), seconds)

    async def _drain_if_full(self) -> None:
        if self._writer.transport.get_write_buffer_size() > 1 << 20:
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    async def _poll_running(self) -> None:
        while True:
            await self._active.wait()
            await asyncio.sleep(RUNNING_POLL)
            running = self._engine.running
            if running != self._running:
                self._running = running
                self.send(wire.frame(["r", running]))
            if not self._tasks and not self._direct and not running:
                self._active.clear()

    async def _flush(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()


def _error_frame(request: int, exc: BaseException) -> bytes:
    if not isinstance(exc, BastionError):
        log.error("a generation failed in the engine process", exc_info=exc)
    return wire.frame(["x", request, wire.encode_error(exc)])


async def _main(channel: socket.socket) -> int:
    from bastion.engine.factory import build_engine  # noqa: PLC0415 - loads llama.cpp

    reader, writer = await asyncio.open_unix_connection(sock=channel)
    try:
        init = await wire.read_frame(reader)
    except (asyncio.IncompleteReadError, ConnectionError, wire.ProtocolError):
        return 1
    spec = wire.decode_spec(init[1])
    settings = EngineSettings.model_validate({**init[2], "isolation": "thread"})
    try:
        engine = build_engine(spec, settings)
        await engine.start()
    except Exception as exc:
        if not isinstance(exc, BastionError):
            log.exception("loading %s failed in the engine process", spec.name)
            exc = ModelLoadError(f"model '{spec.name}' failed to load")
        writer.write(wire.frame(["load_error", wire.encode_error(exc)]))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return 0
    server = Server(engine, reader, writer)
    server.watch_engine()
    writer.write(wire.frame(["loaded", wire.encode_info(engine.info)]))
    try:
        return await server.serve()
    finally:
        await engine.close()
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bastion.engine.isolation.child")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    # Ctrl-C in a terminal is the parent's to handle: it closes this process in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    configure_logging(args.log_level)
    # The API process logs this engine's transitions (with the pid); the inner engine's own
    # would repeat each one. Its failures still show.
    logging.getLogger("bastion.engine.lifecycle").setLevel(logging.WARNING)
    channel = socket.socket(fileno=args.fd)
    return asyncio.run(_main(channel))


if __name__ == "__main__":
    sys.exit(main())
