"""Keep the server's death loud: ``bastion serve`` runs the server in a child process and
outlives it.

A native crash inside an engine (a segmentation fault in llama.cpp, an illegal instruction)
kills the process that hosts it without a Python exception, so nothing in that process can log
it. In the child, ``faulthandler`` writes every thread's Python traceback to the log as it dies;
the parent, which survives, then writes the last line: the signal, and which models were
loading or being served, on which engine, and exits non-zero.

Parent and child share one socket pair. The parent sends the settings overrides first; the
child reports each model's state change as one JSON line. When the parent is gone (killed, its
terminal closed), the child reads EOF and shuts down gracefully, so no orphan keeps the port.
Engines still run inside the server process; moving them out, so that the API survives them,
is the router's work.
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
from typing import Any

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


def _read_line(channel: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = channel.recv(65536)
        if not chunk:
            raise ConnectionError("the watchdog closed the channel before the settings")
        data += chunk
    return data


def _stop_when_orphaned(channel: socket.socket) -> None:
    """EOF means the parent died: stop as on SIGTERM (running requests drain first)."""
    with contextlib.suppress(OSError):
        while channel.recv(4096):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main(fd: int) -> None:
    """The server process: ``python -m bastion.api.watchdog FD``."""
    # First, before anything native loads: a fatal signal dumps every thread's stack to the log.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    channel = socket.socket(fileno=fd)
    overrides: dict[str, dict[str, Any]] = json.loads(_read_line(channel))
    from bastion.api.server import serve  # noqa: PLC0415 - the parent never loads the engine
    from bastion.errors import BastionError  # noqa: PLC0415
    from bastion.log import configure_logging  # noqa: PLC0415
    from bastion.settings import ensure_dir, home_dir, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(overrides)
        configure_logging(settings.server.log_level)
        threading.Thread(target=_stop_when_orphaned, args=(channel,), daemon=True).start()
        serve(settings, ensure_dir(home_dir()), report=StateReport(channel))
    except BastionError as exc:
        print(f"bastion: {exc.message}", file=sys.stderr)  # noqa: T201 - as the CLI does
        sys.exit(2)


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
        f"{'loading' if state == 'loading' else 'serving'} model '{model}' on the {engine} engine"
        for model, (engine, state) in sorted(states.items())
        if state in ("loading", "ready")
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


def run_watched(overrides: dict[str, dict[str, Any]]) -> int:
    """Run the server in a child process until it exits; return the exit code to use."""
    parent_end, child_end = socket.socketpair()
    process = subprocess.Popen(  # noqa: S603 - this interpreter and this module, fixed argv
        [sys.executable, "-m", "bastion.api.watchdog", str(child_end.fileno())],
        pass_fds=(child_end.fileno(),),
        # Its own process group: a terminal's Ctrl-C reaches the parent only, which passes it
        # on once (a second one still forces the drain to stop, as uvicorn does).
        process_group=0,
    )
    child_end.close()
    states = ModelStates()
    reader = threading.Thread(target=states.read_from, args=(parent_end,), daemon=True)
    reader.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    try:
        with contextlib.suppress(OSError):
            parent_end.sendall(json.dumps(overrides).encode() + b"\n")
        returncode = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if process.poll() is None:  # the parent itself is failing: do not leave the child
            process.kill()
            process.wait()
    reader.join(timeout=5)
    parent_end.close()
    if returncode >= 0:
        return returncode
    log.critical("%s", describe_death(returncode, states.snapshot()))
    return 128 - returncode


if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
