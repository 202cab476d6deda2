"""The chat-template worker: a child process that compiles and renders one untrusted template.

A GGUF's chat template is attacker-controlled code. Jinja runs it in Python, where a thread
cannot be stopped, so it runs here instead: the server can kill this process at any moment
(``bastion.engine.chat_template`` does, past its deadline). Inside, rendering is also bounded so
that ordinary abuse fails fast with a reason: a work budget (calls, lookups, ``range`` items),
a deadline (checked as work is charged, and by an interval timer for loops that charge nothing),
a cap on the size of values and output, and an address-space limit. Output must be valid
Unicode: a lone surrogate could not be encoded for the tokenizer.

Protocol on stdin/stdout: frames of a 4-byte big-endian length and a UTF-8 JSON object. The
first request compiles (``source``, ``bos_token``, ``eos_token``); each later one renders
(``messages``, ``add_generation_prompt``, ``max_output``, ``max_ops``, ``seconds``). Replies are
``{"text": ...}`` or ``{"error": ...}``. Only jinja2 and the standard library are imported here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import resource
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn, cast

from jinja2 import TemplateError, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

_HEADER = struct.Struct(">I")
MAX_INT_BITS = 4096
"""Larger integers are refused in ``*`` and ``**``: chat templates never need them."""
_NUMBER = re.compile(r"\d+")
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")
MEMORY_HEADROOM = 512 * 1024 * 1024
"""Address space a render may add above the worker's size when it starts, plus 8x the request."""


class LimitExceededError(Exception):
    """The template went past one of the bounds; the message names which."""


class TemplateRaisedError(Exception):
    """The template called ``raise_exception``: it rejected the conversation."""


class InvalidOutputError(Exception):
    """The template wrote text that is not valid Unicode (a lone surrogate)."""


class Budget:
    """Work, time and size allowed to one render; every hook of the sandbox charges it."""

    def __init__(self, max_ops: int, seconds: float, max_value: int) -> None:
        self.ops = max_ops
        self.deadline = time.monotonic() + seconds
        self.max_value = max_value

    def charge(self, ops: int = 1) -> None:
        self.ops -= ops
        if self.ops < 0:
            raise LimitExceededError("the chat template exceeded its work budget")
        if time.monotonic() > self.deadline:
            raise LimitExceededError("the chat template exceeded its time budget")

    def check_size(self, size: int) -> None:
        if size > self.max_value:
            raise LimitExceededError(
                f"the chat template built a value longer than {self.max_value} characters"
            )


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, charging a ``Budget`` at each call, lookup and loop item."""

    # Intercepted operators and context-taking filters are also never folded at compile time,
    # where no budget applies ('%0999999999d' % 1 would otherwise build a gigabyte there).
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True)
        self.budget = Budget(0, 0.0, 0)
        self.filters = {name: self._bounded(f) for name, f in self.filters.items()}
        self.tests = {
            name: self._bounded(cast(Callable[..., Any], f)) for name, f in self.tests.items()
        }
        self.globals.pop("lipsum", None)  # generates text from a count: no template needs it
        self.globals["range"] = self._range
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.budget.charge()
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            self.budget.check_size(len(result))
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.budget.charge()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.budget.charge()
        return super().getitem(obj, argument)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.budget.charge()
        if operator == "*":
            self._check_product(left, right)
        elif operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and max(left.bit_length(), 1) * right > MAX_INT_BITS
            ):
                raise LimitExceededError("the chat template computed a power too large")
        elif operator == "%":
            if isinstance(left, str):
                self._check_format(left, right if isinstance(right, tuple) else (right,), "*")
        elif isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            self.budget.check_size(len(left) + len(right))
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        format_ = wrapped

        def checked(*args: Any, **kwargs: Any) -> str:
            values = [*args, *kwargs.values()]
            values += [v for a in args if isinstance(a, dict) for v in a.values()]  # format_map
            self._check_format(fmt, tuple(values), "{" if _NESTED_FIELD.search(fmt) else "")
            return format_(*args, **kwargs)

        return checked

    def _check_format(self, fmt: str, args: tuple[Any, ...], width_from_args: str) -> None:
        """Refuse a format whose widths alone would exceed the value cap."""
        if any(int(n) > self.budget.max_value for n in _NUMBER.findall(fmt[:4096])):
            raise LimitExceededError("the chat template used a format width too large")
        if width_from_args and width_from_args in fmt:
            self._check_numbers(args)

    def _check_numbers(self, values: Any) -> None:
        for value in values:
            if isinstance(value, int) and abs(value) > self.budget.max_value:
                raise LimitExceededError("the chat template passed a number too large")

    def _bounded(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a filter or test: charged, no huge width argument, no huge result."""
        kind = _PassArg.from_obj(func)

        @pass_context
        def bounded(context: Context, *args: Any, **kwargs: Any) -> Any:
            self.budget.charge()
            self._check_numbers((*args[1:], *kwargs.values()))
            if func.__name__ == "do_format" and args and isinstance(args[0], str):
                self._check_format(args[0], args[1:], "*")
            if kind is _PassArg.context:
                result = func(context, *args, **kwargs)
            elif kind is _PassArg.eval_context:
                result = func(context.eval_ctx, *args, **kwargs)
            elif kind is _PassArg.environment:
                result = func(self, *args, **kwargs)
            else:
                result = func(*args, **kwargs)
            if isinstance(result, str | list | tuple | dict):
                self.budget.check_size(len(result))
            return result

        return bounded

    def _check_product(self, left: Any, right: Any) -> None:
        # Checked before multiplying: 'x' * 10**9 must fail without allocating a gigabyte.
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(count, int):
                self.budget.check_size(len(seq) * max(count, 0))
                return
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS
        ):
            raise LimitExceededError("the chat template computed a product too large")

    def _range(self, *args: int) -> Iterator[int]:
        numbers = range(*args)
        if len(numbers) > MAX_RANGE:
            raise LimitExceededError(
                f"the chat template asked for a range of more than {MAX_RANGE}"
            )
        return self._counted(numbers)

    def _counted(self, numbers: range) -> Iterator[int]:
        # Each item is charged: nested loops over range() run out of budget, not out of time.
        for number in numbers:
            self.budget.charge()
            yield number


def _printable(text: str, limit: int) -> str:
    """Template-made text bound for messages and logs: short, control characters escaped."""
    return text[:limit].encode("unicode_escape").decode("ascii")


def _raise_exception(message: object) -> NoReturn:
    raise TemplateRaisedError(_printable(str(message), 300))


def _strftime_now(fmt: str) -> str:
    return dt.datetime.now(tz=dt.UTC).strftime(fmt[:100])


def _limit_memory(request_size: int) -> None:
    """Cap the address space for this render: a single huge allocation fails here, not in the
    server, and memory the template grabs is returned when the worker is replaced."""
    try:
        pages = Path("/proc/self/statm").read_text(encoding="ascii").split()[0]
        current = int(pages) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = current + MEMORY_HEADROOM + 8 * request_size
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class Worker:
    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        self.env = BoundedSandbox()
        self.template = self.env.from_string(source)
        self.bos = bos_token
        self.eos = eos_token
        self.parent = os.getppid()

    def render(self, request: dict[str, Any]) -> str:
        seconds = float(request["seconds"])
        # Loops over strings or lists charge nothing, so the budget's deadline alone could wait
        # forever: the timer interrupts them (between bytecodes) at the same deadline.
        previous = signal.signal(signal.SIGALRM, self._out_of_time)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return self._render(request, seconds)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _out_of_time(self, signum: int, frame: object) -> NoReturn:
        if os.getppid() != self.parent:
            os._exit(0)  # the server is gone: nobody will read this render
        raise LimitExceededError("the chat template exceeded its time budget")

    def _render(self, request: dict[str, Any], seconds: float) -> str:
        max_output = int(request["max_output"])
        self.env.budget = Budget(int(request["max_ops"]), seconds, max_output)
        context = {
            "messages": request["messages"],
            "add_generation_prompt": bool(request["add_generation_prompt"]),
            "bos_token": self.bos,
            "eos_token": self.eos,
        }
        pieces: list[str] = []
        size = 0
        # Streamed, so the output cap stops a template that writes forever.
        for piece in self.template.generate(**context):
            size += len(piece)
            if size > max_output:
                raise LimitExceededError(
                    f"the chat template wrote more than {max_output} characters"
                )
            self.env.budget.charge()
            pieces.append(piece)
        text = "".join(pieces)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # '\ud800' or '%c' % 55296: checked here so the request fails as a 400, not in the
            # server's tokenizer.
            raise InvalidOutputError(
                "the chat template wrote text that is not valid Unicode (a lone surrogate)"
            ) from None
        return text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LimitExceededError | InvalidOutputError):
        return str(exc)
    if isinstance(exc, TemplateRaisedError):
        return f"the model's chat template rejected the messages: {exc}"
    if isinstance(exc, RecursionError):
        return "the chat template recursed or nested too deeply"
    if isinstance(exc, MemoryError):
        return "the chat template used too much memory"
    if isinstance(exc, TemplateError):
        return (
            f"the model's chat template failed ({type(exc).__name__}: {_printable(str(exc), 200)})"
        )
    return f"the model's chat template failed ({type(exc).__name__})"


def _read(stream: IO[bytes]) -> tuple[dict[str, Any], int] | None:
    """The next request and its size in bytes; None once the server closed the pipe."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    request: dict[str, Any] = json.loads(data)
    return request, size


def _write(stream: IO[bytes], reply: dict[str, Any]) -> None:
    data = json.dumps(reply).encode()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def main() -> None:
    # The server stops this process itself; a Ctrl-C meant for the server must not race it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the pipe
    first = _read(stdin)
    if first is None:
        return
    init, size = first
    _limit_memory(size)
    try:
        worker = Worker(init["source"], init["bos_token"], init["eos_token"])
    except (TemplateError, SyntaxError, RecursionError, MemoryError, ValueError) as exc:
        message = (
            _printable(str(exc), 200) if isinstance(exc, TemplateError) else type(exc).__name__
        )
        _write(stdout, {"error": f"does not compile ({message})"})
        return
    _write(stdout, {"text": ""})
    while (received := _read(stdin)) is not None:
        request, size = received
        try:
            _limit_memory(size)
            reply = {"text": worker.render(request)}
        except Exception as exc:  # noqa: BLE001 - every failure of the template is reported
            reply = {"error": _describe(exc)}
        _write(stdout, reply)


if __name__ == "__main__":
    main()
