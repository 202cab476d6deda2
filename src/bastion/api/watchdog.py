"""Keep the server's death loud: ``bastion serve`` runs the server in a child process and
outlives it.

A native crash inside an engine (a segmentation fault in llama.cpp, an illegal instruction)
kills the process that hosts it without a Python exception, so nothing in that process can log
it. In the child, ``faulthandler`` writes every thread's Python traceback to the log as it dies;
the parent, which survives, then writes the last line: the signal, and which models were
loading or being served, on which engine, and exits with 128 + the signal number.

The parent imports nothing but the standard library, so it costs the server's start almost
nothing: the child is the whole ``bastion serve`` command (settings, checks, errors, exit
codes), started with ``--watchdog-fd``. The two share one socket pair: the child reports each
model's state change as one JSON line, and reads EOF when the parent is gone (killed, its
terminal closed), then shuts down gracefully, so no orphan keeps the port. Engines still run
inside the server process; moving them out, so the API survives them, is the router's work.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("bastion.watchdog")

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# ---- child side ----------------------------------------------------------------------------


class StateReport:
    """The child's end: model state changes go to the parent, one JSON line each."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._lock = threading.Lock()

    def __call__(self, model: str, engine: str, state: str) -> None:
        line = json.dumps({"model": model, "engine": engine, "state": state}) + "\n"
        with self._lock, contextlib.suppress(OSError):  # a parent that left cannot listen
            self._channel.sendall(line.encode())


def _stop_when_orphaned(channel: socket.socket) -> None:
    """EOF means the parent died: stop as on SIGTERM (running requests drain first)."""
    with contextlib.suppress(OSError):
        while channel.recv(4096):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def attach(fd: int | None) -> StateReport | None:
    """In the server process, before anything native loads: dump every thread's stack on a
    fatal signal; with the watchdog's ``fd``, also stop when it goes and report model states
    to it."""
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if fd is None:
        return None
    channel = socket.socket(fileno=fd)
    threading.Thread(target=_stop_when_orphaned, args=(channel,), daemon=True).start()
    return StateReport(channel)


# ---- parent side ---------------------------------------------------------------------------


@dataclass
class ModelStates:
    """What the parent knows of the child's models, from its reports."""

    states: dict[str, tuple[str, str]] = field(default_factory=dict)
    """model -> (engine, state)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            model, engine, state = str(record["model"]), str(record["engine"]), record["state"]
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            self.states[model] = (engine, str(state))

    def read_from(self, channel: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := channel.recv(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self.update(line)

    def snapshot(self) -> dict[str, tuple[str, str]]:
        with self.lock:
            return dict(self.states)


def describe_death(returncode: int, states: dict[str, tuple[str, str]]) -> str:
    """The last log line after the server process died of a signal (``returncode`` < 0)."""
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    doing = "; ".join(
        f"{'loading' if state == 'starting' else 'serving'} model '{model}' on the {engine} engine"
        for model, (engine, state) in sorted(states.items())
        if state in ("starting", "ready", "stopping")
    )
    hint = ""
    if signum in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT):
        hint = (
            "; the tracebacks above show where. A crash in llama.cpp at the first request on "
            "an Intel CPU with AMX: see engine.repack in docs/engine.md"
        )
    elif signum == signal.SIGKILL:
        hint = "; SIGKILL comes from outside the process (the kernel's OOM killer, an operator)"
    where = f"while {doing}" if doing else "with no model loading or loaded"
    return f"the bastion server process died of {name} (signal {signum}) {where}{hint}"


def watch(args: list[str]) -> int:
    """Run ``bastion ARGS`` (a ``serve`` command) in a child process until it exits, passing
    stop signals on; return the exit code to use."""
    channel, child_end = socket.socketpair()
    fd = child_end.fileno()
    process = subprocess.Popen(  # noqa: S603 - this interpreter and the CLI's own arguments
        [sys.executable, "-m", "bastion.cli.main", *args, "--watchdog-fd", str(fd)],
        pass_fds=(fd,),
        # Its own process group: a terminal's Ctrl-C reaches the parent only, which passes it
        # on once (a second one still cuts the drain short, as uvicorn does).
        process_group=0,
    )
    child_end.close()
    states = ModelStates()
    reader = threading.Thread(target=states.read_from, args=(channel,), daemon=True)
    reader.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    try:
        returncode = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if process.poll() is None:  # the parent itself is failing: do not leave the child
            process.kill()
            process.wait()
    reader.join(timeout=5)
    channel.close()
    if returncode >= 0:
        return returncode
    from bastion.log import configure_logging  # noqa: PLC0415 - only when there is news

    configure_logging("info")
    log.critical("%s", describe_death(returncode, states.snapshot()))
    return 128 - returncode
