"""A native crash is loud, and every CPU gets a repack policy that serves.

The crash is a real SIGSEGV delivered to the server process while it decodes: the same signal
llama.cpp's AMX kernels raise on the CPUs of issue 10, without needing such a CPU.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from bastion.engine.llamacpp.model import repack_decision
from tests.e2e.conftest import Server, start_server

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def ask_two_plus_two(server: Server) -> str:
    reply = server.client(timeout=120).chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=16,
        messages=[{"role": "user", "content": "What is 2+2? Respond with only the number."}],
    )
    return reply.choices[0].message.content or ""


def test_a_segfault_while_decoding_is_logged_with_the_model_and_exits_non_zero(
    shared_home: Path,
) -> None:
    """In-process engines (``engine.isolation: thread``): llama.cpp's crash is the server's.
    With the default process isolation the engine's own process dies instead and the server
    restarts it (tests/e2e/test_engine_crash.py)."""
    server = start_server(shared_home, env={"BASTION_ENGINE__ISOLATION": "thread"})
    try:
        worker = server.worker_pid()
        body = {"model": MODEL, "prompt": COUNT, "max_tokens": 1500, "temperature": 0}
        body["stream"] = True
        outcome: list[BaseException | None] = []
        streaming = threading.Event()

        def stream() -> None:
            try:
                with httpx.stream("POST", f"{server.v1}/completions", json=body, timeout=60) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            streaming.set()
                outcome.append(None)
            except httpx.HTTPError as exc:
                outcome.append(exc)

        client = threading.Thread(target=stream)
        client.start()
        assert streaming.wait(timeout=60), "the stream never started"
        os.kill(worker, signal.SIGSEGV)
        code = server.process.wait(timeout=60)
        client.join(timeout=60)
    finally:
        server.stop()
    log = server.log_text()
    assert code == 128 + signal.SIGSEGV
    # faulthandler: every thread's Python stack, the engine's owner thread among them.
    assert "Fatal Python error: Segmentation fault" in log
    assert "engine/llamacpp/engine.py" in log
    last = log.rstrip().splitlines()[-1]
    assert "CRITICAL" in last
    assert "died of SIGSEGV" in last
    assert f"serving model '{MODEL}' on the llamacpp engine" in last
    assert outcome, "the client thread must have finished"
    assert outcome[0] is not None, "the stream must end in an error, not cleanly"


def test_the_server_stops_when_its_watchdog_is_killed(shared_home: Path) -> None:
    server = start_server(shared_home, wait_ready=False)
    try:
        worker = server.worker_pid()
        server.process.kill()
        server.process.wait(timeout=30)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{worker}").exists():
            status = Path(f"/proc/{worker}/stat").read_text().split()[2]
            if status == "Z":  # exited; only its parent (now gone) would reap it
                break
            assert time.monotonic() < deadline, "the orphaned server kept running"
            time.sleep(0.1)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.base_url}/health", timeout=5)
    finally:
        server.stop()


def test_a_catalog_entry_overrides_repack_for_its_model(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "catalog.yaml").write_text(f"models:\n  {MODEL}:\n    repack: 'off'\n")
    server = start_server(home, env={"BASTION_ENGINE__REPACK": "on"})
    try:
        server.wait_for_log(rf"loading {MODEL} with llama.cpp, repack off: set to off")
        assert "4" in ask_two_plus_two(server)
    finally:
        assert server.stop() == 0


NO_AMX = pytest.mark.skipif(
    not repack_decision("auto").enabled,
    reason="this CPU has AMX: repacking on crashes llama.cpp here (llama.cpp issue 20824)",
)


@pytest.mark.parametrize("setting", ["off", pytest.param("on", marks=NO_AMX)])
def test_a_forced_repack_setting_serves_and_says_so(shared_home: Path, setting: str) -> None:
    server = start_server(shared_home, env={"BASTION_ENGINE__REPACK": setting})
    try:
        server.wait_for_log(rf"loading {MODEL} with llama.cpp, repack {setting}: set to {setting}")
        server.wait_for_log(rf"{MODEL} passed its self-test")
        assert "4" in ask_two_plus_two(server)
    finally:
        assert server.stop() == 0


def test_auto_logs_the_decision_this_cpu_gets(server: Server) -> None:
    decision = repack_decision("auto")
    server.wait_for_log(rf"repack {decision.label}: auto: ")
    assert "4" in ask_two_plus_two(server)
