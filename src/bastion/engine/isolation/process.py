"""One engine process seen from the API process: spawn it, talk to it, end it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from bastion.engine.isolation import wire

log = logging.getLogger(__name__)

CHILD_MODULE = "bastion.engine.isolation.child"
CHILD_COMMAND: tuple[str, ...] = (sys.executable, "-m", CHILD_MODULE)
"""The engine process's program; it gets ``--fd``, ``--parent`` and ``--log-level``."""
DRAIN_WITHIN = 1.0
"""Seconds ``stop`` lets the close frame reach a child that has unread input; a stopped or
wedged child is then signalled without it."""
REAP_WITHIN = 30.0
"""Seconds to wait for a SIGKILLed child to be reaped (one in uninterruptible sleep takes as
long as its I/O); then it is left to the interpreter to reap."""

# What the engine process inherits. An allowlist: the API process's environment holds secrets
# (the webhook secret, whatever else operators export) that the engine has no use for.
_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "BASTION_ENGINE_TRACE",  # the engine's opt-in step trace (bench/trace_summary.py)
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "BASTION_HOME",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "LD_LIBRARY_PATH",
        "VIRTUAL_ENV",
        "SYSTEMROOT",
    }
)
_ENV_PREFIXES = (
    "LC_",
    "GOMP_",
    "OMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
    "GGML_",
    "LLAMA_",
    "CUDA_",
    "PYTHON",
    "MALLOC_",
    "GLIBC_TUNABLES",
    "COV_CORE_",
    "COVERAGE_",
)
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSW", "CREDENTIAL", "AUTH")


def describe_exit(returncode: int | None) -> str:
    """``died of SIGKILL (signal 9)`` / ``exited with status 70``, for the log."""
    if returncode is None:
        return "closed its channel"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"died of {name} (signal {-returncode})"
    return f"exited with status {returncode}"


class EngineProcess:
    """A started child process and the API side of its channel (asyncio streams)."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def spawn(cls, model: str) -> EngineProcess:
        """Start ``python -m bastion.engine.isolation.child`` on one end of a socket pair.

        Called on the event loop's thread: Linux ties ``PR_SET_PDEATHSIG`` to the thread that
        created the child, and a short-lived worker thread would take the child with it.
        """
        ours, theirs = socket.socketpair()
        try:
            process = _start(theirs)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        log.info("engine process for %s started, pid %d", model, process.pid)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            process.kill()  # reaped by the interpreter if it has not exited by the poll
            process.poll()
            raise
        return cls(process, reader, writer)

    def send(self, message: list[Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.frame(message))

    @property
    def unsent(self) -> int:
        """Bytes written to the channel that the child has not taken yet."""
        return self.writer.transport.get_write_buffer_size()

    async def exit_status(self, within: float = 5.0) -> int | None:
        """The exit status once the process ended (its channel is at EOF); None if it still
        lives after ``within`` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while (code := self.process.poll()) is None:
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(0.005)
        return code

    async def stop(self, grace: float, kill_after: float) -> int | None:
        """Ask the process to finish and exit, then SIGTERM after ``grace`` seconds, then
        SIGKILL after ``kill_after`` more; returns its exit status."""
        self.send(["q"])
        # Bounded: a stopped child reads nothing and the drain would wait for ever.
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(min(DRAIN_WITHIN, grace)):
                await self.writer.drain()
        code = await self.exit_status(grace)
        if code is None:
            log.warning("engine process %d did not exit in %.0fs: SIGTERM", self.pid, grace)
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            code = await self.exit_status(kill_after)
        if code is None:
            log.warning("engine process %d ignored SIGTERM: SIGKILL", self.pid)
            self.kill()
            # Polled, never Popen.wait(): a child in uninterruptible sleep would block the loop.
            code = await self.exit_status(REAP_WITHIN)
            if code is None:
                log.error("engine process %d has not exited after SIGKILL", self.pid)
        self.close_channel()
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def close_channel(self) -> None:
        self.writer.close()


def _start(channel: socket.socket) -> subprocess.Popen[bytes]:
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    return subprocess.Popen(  # noqa: S603 - this interpreter and our own module
        [
            *CHILD_COMMAND,
            "--fd",
            str(channel.fileno()),
            "--parent",
            str(os.getpid()),
            "--log-level",
            level if level in ("debug", "info", "warning", "error") else "info",
        ],
        pass_fds=(channel.fileno(),),
        env=child_environment(os.environ),
        stdin=subprocess.DEVNULL,
        # Whatever native code prints goes to the log stream, never to the CLI's output.
        stdout=sys.stderr.fileno() if _has_fileno() else subprocess.DEVNULL,
        # Its own session: a terminal's Ctrl-C is the API process's to handle.
        start_new_session=True,
    )


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the engine process needs (paths, locale, threading and library knobs),
    without anything that looks like a secret."""
    return {
        name: value
        for name, value in environ.items()
        if (name in _ENV_NAMES or name.startswith(_ENV_PREFIXES))
        and not any(word in name.upper() for word in _SECRET_WORDS)
    }


def _has_fileno() -> bool:
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True
