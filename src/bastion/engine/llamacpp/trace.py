"""An opt-in per-step trace of the engine's decode loop, for finding where the time goes.

Set ``BASTION_ENGINE_TRACE=/path/to/file.jsonl`` before the engine starts and the owner thread
appends one JSON object per decode step::

    {"t": 12.3456, "decode": 4, "prefill": 0, "running": 4, "active": 4,
     "decode_ms": 20.7, "gap_ms": 0.6}

``decode``: tokens of running streams (one each); ``prefill``: prompt tokens in the same
batch; ``running``: sequences holding a slot; ``active``: requests the engine holds (queued,
running, or finished with output not yet handed over); ``decode_ms``: time inside
``llama_decode``; ``gap_ms``: time from the end of the previous ``llama_decode`` to the start
of this one (scheduling, sampling, hand-off, waiting for requests when idle). ``t``: seconds
from the start of the trace to the start of the step.

Unset, nothing is created: the engine calls ``llama_decode`` directly, as without a trace.
Set, the lines are kept in memory and written every ``FLUSH_EVERY`` steps and at close, so
the hot path never makes a system call of its own.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ENV = "BASTION_ENGINE_TRACE"
FLUSH_EVERY = 512
"""Steps held in memory between writes."""

Decode = Callable[[Any, Any], int]


class StepTrace:
    """Collects one record per ``llama_decode`` call; only the owner thread touches it."""

    def __init__(self, path: Path, flush_every: int = FLUSH_EVERY) -> None:
        self.path = path
        self._flush_every = flush_every
        self._lines: list[str] = []
        self._started = 0.0
        self._ended = 0.0
        self._tokens = 0
        self._closed = False
        self._origin = time.perf_counter()
        self._previous_end: float | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def timed(self, decode: Decode) -> Decode:
        """``decode`` measured: start and end times and the batch size of each call."""

        def call(ctx: Any, batch: Any) -> int:
            self._started = time.perf_counter()
            try:
                return decode(ctx, batch)
            finally:
                self._ended = time.perf_counter()
                self._tokens = int(batch.n_tokens)

        return call

    def step(self, decoding: int, running: int, active: int) -> None:
        """Record the step whose ``llama_decode`` just returned; ``decoding`` of its tokens
        were running streams' next tokens, the rest prompt tokens."""
        previous, self._previous_end = self._previous_end, self._ended
        gap = 0.0 if previous is None else self._started - previous
        record = {
            "t": round(self._started - self._origin, 6),
            "decode": decoding,
            "prefill": self._tokens - decoding,
            "running": running,
            "active": active,
            "decode_ms": round((self._ended - self._started) * 1000, 3),
            "gap_ms": round(gap * 1000, 3),
        }
        self._lines.append(json.dumps(record, separators=(",", ":")))
        if len(self._lines) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines = []
        with self.path.open("a", encoding="utf-8") as out:
            out.write(text)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.flush()


def open_trace(
    decode: Decode, environ: Mapping[str, str] = os.environ
) -> tuple[StepTrace | None, Decode]:
    """The trace asked for by the environment (or None) and the decode function to call:
    ``decode`` itself when off, a timed wrapper around it when on."""
    path = environ.get(ENV, "").strip()
    if not path:
        return None, decode
    trace = StepTrace(Path(path).expanduser())
    return trace, trace.timed(decode)
