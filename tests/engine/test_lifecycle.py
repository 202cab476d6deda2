"""An engine's state machine: each transition logged once with model, kind and reason; a
failed engine stays failed until it is started again."""

from __future__ import annotations

import logging

import pytest

from bastion.engine.base import EngineState
from bastion.engine.lifecycle import Lifecycle

S = EngineState


def test_a_new_engine_is_stopped_and_not_ready() -> None:
    life = Lifecycle("m", "llamacpp")
    assert life.state is S.STOPPED
    assert not life.ready


def test_each_transition_is_logged_once_and_heard(caplog: pytest.LogCaptureFixture) -> None:
    life = Lifecycle("m", "llamacpp")
    heard: list[tuple[EngineState, str]] = []
    life.listen(lambda state, reason: heard.append((state, reason)))
    with caplog.at_level(logging.INFO, logger="bastion.engine.lifecycle"):
        assert life.move(S.STARTING, "loading m.gguf")
        assert not life.move(S.STARTING, "loading m.gguf")  # already there: nothing
        assert life.move(S.READY, "loaded")
    assert heard == [(S.STARTING, "loading m.gguf"), (S.READY, "loaded")]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "model m (llamacpp engine): stopped -> starting: loading m.gguf",
        "model m (llamacpp engine): starting -> ready: loaded",
    ]
    assert life.ready


def test_failed_is_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    life = Lifecycle("m", "llamacpp")
    with caplog.at_level(logging.INFO, logger="bastion.engine.lifecycle"):
        life.move(S.FAILED, "the engine thread died: RuntimeError")
    assert caplog.records[-1].levelno == logging.ERROR


@pytest.mark.parametrize("late", [S.READY, S.STOPPING, S.STOPPED])
def test_a_failed_engine_stays_failed_until_started_again(late: EngineState) -> None:
    life = Lifecycle("m", "llamacpp")
    life.move(S.STARTING, "loading")
    life.move(S.FAILED, "the engine process died of SIGKILL (signal 9)")
    assert not life.move(late, "too late")
    assert life.state is S.FAILED
    assert life.reason == "the engine process died of SIGKILL (signal 9)"
    assert life.move(S.STARTING, "restart 1 of 5")
    assert life.move(S.READY, "loaded")


def test_a_listener_that_raises_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    life = Lifecycle("m", "fake")
    heard: list[EngineState] = []

    def broken(state: EngineState, reason: str) -> None:
        raise RuntimeError("listener bug")

    life.listen(broken)
    life.listen(lambda state, reason: heard.append(state))
    life.move(S.STARTING, "loading")
    assert heard == [S.STARTING]
    assert "a listener of m's engine state failed" in caplog.text
