"""A real ``bastion serve`` process on a free loopback port, driven over real sockets."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))/v1")
BASTION = Path(sys.executable).with_name("bastion")


@dataclass
class Server:
    """A running server process; ``log`` collects its stderr lines as they arrive."""

    process: subprocess.Popen[str]
    base_url: str = ""
    log: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def client(self, **kwargs: object) -> OpenAI:
        return OpenAI(base_url=self.v1, api_key="unused", max_retries=0, **kwargs)  # type: ignore[arg-type]

    def log_text(self) -> str:
        return "".join(self.log)

    def wait_for_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log_text())
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in server log:\n{self.log_text()}")

    def worker_pid(self) -> int:
        """The server process under ``bastion serve``'s watchdog (Linux: read from /proc)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(children) == 1, f"expected one server process under the watchdog: {children}"
        return int(children[0])

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        code = self.process.wait()
        if self.pump is not None:
            self.pump.join(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code


def audit_record(home: Path, request_id: str, timeout: float = 20) -> dict[str, object]:
    """The audit line of ``request_id``; it is written just after the response is sent."""
    import json  # noqa: PLC0415

    # Requests that never authenticated are audited in their own file.
    paths = [home / "audit" / name for name in ("audit.jsonl", "unauthenticated.jsonl")]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in paths:
            if path.exists():
                for line in path.read_text().splitlines():
                    record = json.loads(line)
                    if record.get("request_id") == request_id:
                        return record  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {request_id}")


def wait_until_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{server.base_url}/ready").status_code != 200:
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise AssertionError(f"server never became ready:\n{server.log_text()}")
        time.sleep(0.1)


def launch(args: list[str], environ: dict[str, str]) -> Server:
    """``bastion ARGS...`` with its stderr collected line by line into ``Server.log``."""
    process = subprocess.Popen(
        [str(BASTION), *args],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(process)

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            server.log.append(line)

    server.pump = threading.Thread(target=pump, daemon=True)
    server.pump.start()
    return server


def start_server(
    home: Path, *args: str, env: dict[str, str] | None = None, wait_ready: bool = True
) -> Server:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    environ.update({"BASTION_HOME": str(home), "BASTION_ENGINE__THREADS": "2"})
    environ.update(env or {})
    server = launch(["serve", "--port", "0", *args], environ)
    try:
        server.base_url = server.wait_for_log(LISTENING.pattern).group(1)
        if wait_ready:
            wait_until_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One BASTION_HOME for the session's shared server (the model is imported once)."""
    return tmp_path_factory.mktemp("bastion-home")


@pytest.fixture(scope="session")
def server(shared_home: Path) -> Iterator[Server]:
    srv = start_server(shared_home, "--ctx-per-slot", "2048")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: Server) -> OpenAI:
    return server.client(timeout=120)
