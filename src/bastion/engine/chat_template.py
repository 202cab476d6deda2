"""Chat templates from model metadata, rendered in a sandboxed, bounded, killable worker.

Templates ship inside model files, so they are untrusted input. Jinja's immutable sandbox stops
them reaching Python internals or mutating the values passed in, but not from running forever:
a thread cannot be stopped, so each template renders in its own child process
(``bastion.engine.template_worker``), which bounds work, time, value and output sizes and
memory itself, and which this side kills when a render outlives its deadline. Rendering then
fails as a 400 naming ``messages``; shutdown kills the worker instead of waiting for it.
A template is checked at load: one that cannot render a two-turn conversation is refused, and
one that changes message content (case, slicing, replacing) is logged: content shielding
(``bastion.engine.special_text``) assumes content reaches the prompt as written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import select
import string
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from bastion.engine.base import ChatMessage
from bastion.errors import (
    ModelLoadError,
    ServiceUnavailableError,
    TemplateRenderError,
)

# ChatML, which most small instruct models speak: a known-good template to test with and to
# copy into a catalog chat_template. Never a fallback: a model without one is completion only.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MAX_SOURCE_CHARS = 256 * 1024
"""Real templates are a few KiB; compiling megabytes of Jinja would stall a load."""
RENDER_SECONDS = 1.0
"""Time one render may take in the worker; real templates take milliseconds."""
KILL_GRACE_SECONDS = 1.0
"""After the worker's own deadline, how long before the server kills it."""
START_SECONDS = 20.0
"""Starting the worker and compiling the template (Python start-up on a busy host)."""
OUTPUT_FLOOR = 1 << 20
OUTPUT_PER_INPUT_CHAR = 4
"""A prompt may be 1 MiB plus 4x the conversation's characters; values inside obey the same cap."""
OPS_BASE = 200_000
OPS_PER_MESSAGE = 200
"""Calls, lookups and loop items one render may use (real templates: tens per message)."""

TWO_TURNS = (
    ChatMessage("user", "Hello!"),
    ChatMessage("assistant", "Hi! How can I help?"),
    ChatMessage("user", "What is 2 + 2?"),
)
"""What every served template must render within its bounds at load."""

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
_WORKER = [sys.executable, "-I", "-m", "bastion.engine.template_worker"]


class _WorkerGoneError(Exception):
    """The worker did not answer in time, or died."""


class _Worker:
    """One template worker process and its framed JSON pipe.

    ``kill`` may come from any thread; the pipes are closed only by the thread that holds the
    template's lock (``close_pipes``), since another thread may still be reading them and a
    closed descriptor number can be reused at once by an unrelated file.
    """

    def __init__(self) -> None:
        # No inherited environment, no site of the user or current directory (-I): the child
        # runs only bastion's own module. A new session keeps terminal signals for the server.
        self._popen = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter, our module
            _WORKER,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},
            start_new_session=True,
        )
        self._kill_lock = threading.Lock()

    def exchange(self, request: dict[str, Any], timeout: float, max_reply: int) -> dict[str, Any]:
        stdin, stdout = self._popen.stdin, self._popen.stdout
        assert stdin is not None  # noqa: S101 - both are pipes
        assert stdout is not None  # noqa: S101
        data = json.dumps(request).encode()
        deadline = time.monotonic() + timeout
        try:
            stdin.write(_HEADER.pack(len(data)) + data)
            stdin.flush()
            (size,) = _HEADER.unpack(_read_exact(stdout.fileno(), _HEADER.size, deadline))
            if size > max_reply:
                raise _WorkerGoneError
            reply: dict[str, Any] = json.loads(_read_exact(stdout.fileno(), size, deadline))
        except (OSError, ValueError) as exc:
            raise _WorkerGoneError from exc
        return reply

    def kill(self) -> None:
        with self._kill_lock:
            if self._popen.returncode is None:
                self._popen.kill()
                self._popen.wait()

    def close_pipes(self) -> None:
        for pipe in (self._popen.stdin, self._popen.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # unsent bytes to a dead worker
                    pipe.close()


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    # poll, not select: select refuses descriptors >= 1024, and the server raises its file
    # limit to serve many connections.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    while size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(math.ceil(remaining * 1000)):
            raise _WorkerGoneError
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise _WorkerGoneError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _shutting_down() -> ServiceUnavailableError:
    return ServiceUnavailableError("the server is shutting down")


class ChatTemplate:
    """A model's chat template; ``close`` it to stop its worker."""

    def __init__(
        self, source: str, *, bos_token: str, eos_token: str, model_name: str = "the model"
    ) -> None:
        if len(source) > MAX_SOURCE_CHARS:
            raise ModelLoadError(
                f"the model's chat template is longer than {MAX_SOURCE_CHARS} characters"
            )
        self._init = {"source": source, "bos_token": bos_token, "eos_token": eos_token}
        self._lock = threading.Lock()
        self._closed = False
        self._worker: _Worker | None = None
        try:
            with self._lock:
                self._start(loading=True)
            self.render(TWO_TURNS)
            keeps_content = self._keeps_content()
        except TemplateRenderError as exc:
            self.close()
            raise ModelLoadError(
                f"the model's chat template cannot render a two-turn conversation: {exc.message}"
            ) from None
        except BaseException:
            self.close()
            raise
        if not keeps_content:
            # Shielding swaps control-token texts as written; '<|IM_START|>'|lower would make one.
            log.warning(
                "model %r: its chat template changes message content (case, slicing or "
                "replacing); content shielding may be incomplete",
                model_name,
            )

    def _keeps_content(self) -> bool:
        """Whether random mixed-case markers come out of the template as written."""
        letters = string.ascii_letters + string.digits
        markers = ["".join(secrets.choice(letters) for _ in range(16)) for _ in TWO_TURNS]
        probe = tuple(
            ChatMessage(m.role, f"Mx{k}") for m, k in zip(TWO_TURNS, markers, strict=True)
        )
        try:
            rendered = self.render(probe)
        except TemplateRenderError:
            return False
        return all(f"Mx{k}" in rendered for k in markers)

    def _start(self, *, loading: bool) -> _Worker:
        """A compiled worker as ``self._worker``; the caller holds the lock."""
        try:
            worker = _Worker()
        except OSError:
            if loading:
                raise ModelLoadError("the chat template worker could not be started") from None
            raise ServiceUnavailableError(
                "the chat template worker could not be restarted"
            ) from None
        # Published before the compile exchange, so that close() can kill it meanwhile.
        self._worker = worker
        try:
            self._check_open(worker)
            reply = worker.exchange(self._init, START_SECONDS, 1 << 16)
            self._check_open(worker)
        except _WorkerGoneError:
            self._drop(worker)
            if self._closed:
                raise _shutting_down() from None
            if not loading:
                raise ServiceUnavailableError(
                    "the chat template worker could not be restarted"
                ) from None
            raise ModelLoadError(
                f"the model's chat template did not compile within {START_SECONDS:.0f}s"
            ) from None
        except BaseException:
            self._drop(worker)
            raise
        if "error" in reply:
            self._drop(worker)
            if not loading:  # it compiled before: this is the host, not the template
                raise ServiceUnavailableError("the chat template worker could not be restarted")
            raise ModelLoadError(f"the model's chat template {reply['error']}")
        return worker

    def _check_open(self, worker: _Worker) -> None:
        """Raise if close() ran: it may have missed the worker, so it is stopped here."""
        if self._closed:
            self._drop(worker)
            raise _shutting_down()

    def _drop(self, worker: _Worker) -> None:
        """Kill a worker and close its pipes; the caller holds the lock."""
        if self._worker is worker:
            self._worker = None
        worker.kill()
        worker.close_pipes()

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        size = sum(len(m.role) + len(m.content) for m in messages)
        max_output = OUTPUT_FLOOR + OUTPUT_PER_INPUT_CHAR * size
        request = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "max_output": max_output,
            "max_ops": OPS_BASE + OPS_PER_MESSAGE * len(messages),
            "seconds": RENDER_SECONDS,
        }
        with self._lock:
            if self._closed:
                raise _shutting_down()
            # None when the last one was killed: a fresh one for this render.
            worker = self._worker or self._start(loading=False)
            try:
                # JSON writes a character outside the BMP as two \uXXXX escapes: 12 bytes.
                reply = worker.exchange(
                    request, RENDER_SECONDS + KILL_GRACE_SECONDS, 12 * max_output + 1024
                )
            except _WorkerGoneError:
                self._drop(worker)
                if self._closed:
                    raise _shutting_down() from None
                raise TemplateRenderError(
                    "the model's chat template did not finish rendering these messages within "
                    f"{RENDER_SECONDS:g}s",
                    param="messages",
                ) from None
            except BaseException:
                # Whatever interrupted it, the worker may still be writing a reply that the
                # next request would read as its own.
                self._drop(worker)
                raise
            self._check_open(worker)
        if "error" in reply:
            raise TemplateRenderError(str(reply["error"]), param="messages")
        return str(reply["text"])

    def __enter__(self) -> ChatTemplate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker now, even mid-render (that render fails as shutting down)."""
        self._closed = True
        worker = self._worker
        if worker is not None:
            worker.kill()
        # Pipes are closed by whoever holds the lock; a render in progress closes them itself.
        if self._lock.acquire(blocking=False):
            try:
                if self._worker is not None:
                    self._drop(self._worker)
            finally:
                self._lock.release()
