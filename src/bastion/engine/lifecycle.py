"""An engine's state machine, owned by the engine (llama-swap's ``internal/process`` shape).

The engine moves its own state; everyone else (the router, /ready, /v1/models, /api/status,
the metrics, the watchdog) reads it or listens. Each transition is logged once, naming the
model, the engine kind and the reason. A transition may come from any thread (an engine's
owner thread that dies, a supervisor's watcher): listeners must be quick and thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bastion.engine.base import EngineState

log = logging.getLogger(__name__)

StateListener = Callable[[EngineState, str], None]
"""Hears ``(new state, reason)`` after each transition."""


class Lifecycle:
    def __init__(self, model: str, kind: str) -> None:
        self.model = model
        self.kind = kind
        self._state = EngineState.STOPPED
        self._reason = "not started"
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._listeners: list[StateListener] = []

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def reason(self) -> str:
        """Why the engine is in its state (for a failed one: what failed; operators only)."""
        return self._reason

    @property
    def since(self) -> float:
        """``time.monotonic()`` of the last transition."""
        return self._since

    @property
    def ready(self) -> bool:
        return self._state is EngineState.READY

    def listen(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def move(self, state: EngineState, reason: str) -> bool:
        """Enter ``state``; False (and nothing logged) when already there. A failed engine
        stays failed until it is started again (``starting``): closing it does not hide why
        it failed, and a "ready" decided just before its thread died cannot revive it."""
        with self._lock:
            previous = self._state
            if previous is state:
                return False
            if previous is EngineState.FAILED and state is not EngineState.STARTING:
                return False
            self._state, self._reason, self._since = state, reason, time.monotonic()
        level = logging.ERROR if state is EngineState.FAILED else logging.INFO
        log.log(
            level,
            "model %s (%s engine): %s -> %s: %s",
            self.model,
            self.kind,
            previous.value,
            state.value,
            reason,
        )
        for listener in list(self._listeners):
            try:
                listener(state, reason)
            except Exception:
                log.exception("a listener of %s's engine state failed", self.model)
        return True
