"""The watchdog's last line: which signal, which models, which engine; and its report parsing."""

from __future__ import annotations

import signal
import socket
import threading

from bastion.api.watchdog import ModelStates, StateReport, describe_death


def test_a_segfault_names_the_model_and_engine_being_served() -> None:
    line = describe_death(-signal.SIGSEGV, {"smollm2": ("llamacpp", "ready")})
    assert "died of SIGSEGV (signal 11)" in line
    assert "serving model 'smollm2' on the llamacpp engine" in line
    assert "engine.repack" in line


def test_a_crash_while_loading_says_loading_and_skips_failed_models() -> None:
    states = {
        "gemma": ("llamacpp", "starting"),
        "broken": ("llamacpp", "failed"),
        "smol": ("llamacpp", "ready"),
    }
    line = describe_death(-signal.SIGILL, states)
    assert "loading model 'gemma' on the llamacpp engine; serving model 'smol'" in line
    assert "broken" not in line


def test_no_model_and_an_outside_kill_are_said_as_such() -> None:
    line = describe_death(-signal.SIGKILL, {"smol": ("llamacpp", "stopped")})
    assert "died of SIGKILL (signal 9) with no model loading or loaded" in line
    assert "OOM" in line


def test_reports_travel_over_the_socket_pair_and_garbage_is_ignored() -> None:
    parent, child = socket.socketpair()
    states = ModelStates()
    reader = threading.Thread(target=states.read_from, args=(parent,))
    reader.start()
    report = StateReport(child)
    report("smol", "llamacpp", "starting")
    child.sendall(b"not json\n{}\n")
    report("smol", "llamacpp", "ready")
    report("gemma", "llamacpp", "failed")
    child.close()
    reader.join(timeout=10)
    parent.close()
    assert states.snapshot() == {"smol": ("llamacpp", "ready"), "gemma": ("llamacpp", "failed")}


def test_a_report_to_a_parent_that_left_is_dropped_silently() -> None:
    parent, child = socket.socketpair()
    parent.close()
    StateReport(child)("smol", "llamacpp", "ready")  # no exception: the parent cannot listen
    child.close()
