"""``kill -9`` of the engine process under a stream costs that stream and nothing more: the
client hears an SSE error, /health never falters, the engine restarts and serves again."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.e2e.conftest import Server, start_server, wait_until_ready

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
STARTED = rf"engine process for {MODEL} started, pid (\d+)"
RESTARTED = re.compile(r"-> ready: restarted after a crash .*\(pid (\d+)\)")


class HealthProbe:
    """Polls /health in the background; remembers every answer that was not 200."""

    def __init__(self, server: Server) -> None:
        self._url = f"{server.base_url}/health"
        self._stop = threading.Event()
        self.failures: list[str] = []
        self.probes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                status = httpx.get(self._url, timeout=10).status_code
                if status != 200:
                    self.failures.append(str(status))
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            self.probes += 1

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def wait_for_restart(server: Server, count: int) -> int:
    """The pid of the engine process after the ``count``-th restart, once it serves."""
    deadline = time.monotonic() + 120
    while len(pids := RESTARTED.findall(server.log_text())) < count:
        assert time.monotonic() < deadline, f"no restart {count}:\n{server.log_text()}"
        time.sleep(0.05)
    wait_until_ready(server)
    return int(pids[count - 1])


def read_killing(stream: Iterable[ChatCompletionChunk], pid: int, received: list[str]) -> None:
    """Read ``stream``, killing process ``pid`` (SIGKILL) once the first text arrived."""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
            if len(received) == 1:
                os.kill(pid, signal.SIGKILL)


def test_kill_9_of_the_engine_mid_stream(shared_home: Path) -> None:
    server = start_server(shared_home, env={"BASTION_ENGINE__RESTART_BACKOFF": "0.2"})
    try:
        first = server.wait_for_log(STARTED, timeout=60)
        pid = int(first.group(1))
        client = server.client(timeout=120)
        with HealthProbe(server) as health:
            # 1. the official SDK: the stream raises APIError instead of ending silently
            stream = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Write a long story about the sea."}],
                max_tokens=1500,
                temperature=0,
                stream=True,
            )
            received: list[str] = []
            with pytest.raises(openai.APIError) as failed:
                read_killing(stream, pid, received)
            assert received
            assert "engine" in str(failed.value.message).lower()
            second = wait_for_restart(server, 1)
            assert second != pid
            reply = client.chat.completions.create(
                model=MODEL,
                messages=[
                    {"role": "user", "content": "What is 2+2? Respond with only the number."}
                ],
                max_tokens=16,
                temperature=0,
            )
            assert "4" in (reply.choices[0].message.content or "")

            # 2. on the wire: an SSE error event, then [DONE]
            body = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 1500, "stream": True}
            lines: list[str] = []
            with httpx.stream("POST", f"{server.v1}/completions", json=body, timeout=60) as resp:
                assert resp.status_code == 200
                for line in resp.iter_lines():
                    if line.startswith("data: {") and not lines:
                        os.kill(second, signal.SIGKILL)
                    if line:
                        lines.append(line)
            assert "event: error" in lines
            assert lines[-1] == "data: [DONE]"
            wait_for_restart(server, 2)
        assert health.probes > 0
        assert health.failures == []
    finally:
        server.stop()
    log = server.log_text()
    assert f"the engine process (pid {pid}) died of SIGKILL (signal 9)" in log
    assert "restarted after a crash" in log
    # The API process lived through both crashes: one server, one listening line.
    assert log.count("listening on") == 1
