"""``IsolatedEngine`` against a misbehaving engine process: a fake child (a small script that
speaks the wire protocol as told) sends malformed frames, stops, or answers late; the parent
must kill it and recover, close it whatever state it is in, and pass it no secrets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.engine.base import Chunk, EngineState, GenerationParams, ModelSpec
from bastion.engine.isolation import IsolatedEngine, process
from bastion.engine.isolation import engine as isolated
from bastion.errors import ModelLoadError, ServiceUnavailableError
from bastion.settings import EngineSettings
from tests.engine.processes import gone, wait_until

SETTINGS = EngineSettings(restart_backoff=0.05)
SPEC = ModelSpec("fake", "llamacpp", Path("/nonexistent/model.gguf"), "0" * 64)
INFO = {
    "name": "fake",
    "digest": "0" * 64,
    "context_length": 64,
    "created": 0,
    "chat": True,
    "memory": 0,
}
LIMIT = 60  # seconds any scenario may take before it counts as hung

FAKE_CHILD = textwrap.dedent(
    """
    import json, os, socket, struct, sys, time
    from pathlib import Path

    here = Path(__file__).parent
    with open(here / "spawns", "a") as spawns:
        spawns.write(f"{os.getpid()}\\n")
    count = len((here / "spawns").read_text().split())
    plans = json.loads((here / "plan.json").read_text())
    plan = plans[min(count, len(plans)) - 1]
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    channel = socket.socket(fileno=fd).makefile("rwb")

    def read():
        head = channel.read(4)
        if len(head) < 4:
            sys.exit(0)
        return json.loads(channel.read(struct.unpack(">I", head)[0]))

    def send_raw(data):
        channel.write(struct.pack(">I", len(data)) + data)
        channel.flush()

    def hang():  # alive, and reading nothing: only a signal ends it
        while True:
            time.sleep(3600)

    read()
    while "wait_for" in plan and not (here / plan["wait_for"]).exists():
        time.sleep(0.01)
    if "init" in plan:
        send_raw(bytes.fromhex(plan["init"]))
        hang()
    send_raw(json.dumps(["loaded", plan["info"]]).encode())
    while True:
        message = read()
        if message[0] == "q":
            sys.exit(0)
        if message[0] != "g":
            continue
        request = str(message[1]).encode()
        if "reply" in plan:
            send_raw(bytes.fromhex(plan["reply"]).replace(b"@ID", request))
            hang()
        send_raw(b'["c",' + request + b',"ok",1,1,"stop",0,0.0,0]')
        send_raw(b'["e",' + request + b',0]')
    """
)


class Fake:
    """The fake engine process's script, what each spawn of it does, and the pids it had."""

    def __init__(self, home: Path) -> None:
        self.home = home
        (home / "fake_child.py").write_text(FAKE_CHILD)

    def plan(self, *plans: dict[str, Any]) -> None:
        """What the 1st, 2nd, ... spawn does (the last one for any later spawn)."""
        filled = [{"info": INFO, **plan} for plan in plans]
        (self.home / "plan.json").write_text(json.dumps(filled))

    @property
    def pids(self) -> list[int]:
        spawns = self.home / "spawns"
        return [int(p) for p in spawns.read_text().split()] if spawns.exists() else []


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    monkeypatch.setattr(process, "CHILD_COMMAND", (sys.executable, str(tmp_path / "fake_child.py")))
    fake = Fake(tmp_path)
    fake.plan({})
    yield fake
    for pid in fake.pids:  # whatever a failing test left behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(scenario: Callable[[], Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(LIMIT):
            return await scenario()

    return asyncio.run(bounded())


async def collect(engine: IsolatedEngine, params: GenerationParams) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(params)]


def reaped(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if item)


HI = GenerationParams(prompt="hi", max_tokens=4)
MALFORMED = {
    "invalid UTF-8": b'["c",@ID,"\xff\xfe",1,1,"stop",0,0.0,0]',
    "not JSON": b"not json",
    "not an array": b'{"c":@ID}',
    "a nameless array": b"[[1]]",
    "nested too deep": b"[" * 100_000 + b"]" * 100_000,
    "an unknown kind": b'["z",@ID]',
    "a short chunk": b'["c",@ID]',
    "a chunk with a string count": b'["c",@ID,"x",1,1,"stop",0,0.0,"many"]',
    "an unknown finish reason": b'["c",@ID,"x",1,1,"done",0,0.0,0]',
    "malformed logprobs": b'["c",@ID,"x",1,1,null,0,0.0,1,[["t",0.0,"raw",[]]]]',
    "an error that is not an object": b'["x",@ID,"boom"]',
    "an empty end": b'["e"]',
    "a running count that is text": b'["r","two"]',
}


@pytest.mark.parametrize("frame", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_frame_kills_the_process_fails_its_streams_and_restarts(
    fake: Fake, frame: bytes
) -> None:
    fake.plan({"reply": frame.hex()}, {})
    eng = IsolatedEngine(SPEC, SETTINGS)
    states: list[EngineState] = []
    eng.lifecycle.listen(lambda state, reason: states.append(state))

    async def scenario() -> str:
        try:
            await eng.start()
            first = eng.pid
            assert first is not None
            with pytest.raises(ServiceUnavailableError) as refused:
                await collect(eng, HI)
            assert refused.value.retry_after is not None
            await wait_until(lambda: eng.lifecycle.ready, "the engine is ready again")
            assert eng.pid not in (None, first)
            assert gone(first)  # it did not exit on its own: it was killed
            return "".join(c.text for c in await collect(eng, HI))
        finally:
            await eng.close()

    assert run(scenario) == "ok"
    assert EngineState.FAILED in states
    assert len(fake.pids) == 2
    assert all(reaped(pid) for pid in fake.pids)


MALFORMED_INIT = {
    "not JSON": b"garbage",
    "no info": b'["loaded"]',
    "info with other fields": b'["loaded",{"bogus":1}]',
    "info of the wrong types": json.dumps(["loaded", {**INFO, "context_length": "64"}]).encode(),
    "an unknown answer": b'["hello",{}]',
}


@pytest.mark.parametrize("frame", list(MALFORMED_INIT.values()), ids=list(MALFORMED_INIT))
def test_a_malformed_answer_to_init_fails_the_load_and_leaves_no_process(
    fake: Fake, frame: bytes
) -> None:
    fake.plan({"init": frame.hex()})
    eng = IsolatedEngine(SPEC, SETTINGS)

    async def scenario() -> None:
        try:
            with pytest.raises(ModelLoadError):
                await eng.start()
            assert eng.lifecycle.state is EngineState.FAILED
            assert eng.pid is None
            (pid,) = fake.pids
            await wait_until(lambda: gone(pid), "the engine process ended")
        finally:
            await eng.close()

    run(scenario)


def test_a_restart_that_never_loads_is_killed_and_counts_as_a_crash(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 2nd spawn waits for a file that never appears instead of answering init."""
    monkeypatch.setattr(isolated, "RESTART_WITHIN", 0.5)
    fake.plan({}, {"wait_for": "never"}, {})
    eng = IsolatedEngine(SPEC, SETTINGS)
    reasons: list[str] = []
    eng.lifecycle.listen(lambda state, reason: reasons.append(f"{state.value}: {reason}"))

    async def scenario() -> str:
        try:
            await eng.start()
            first = eng.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: len(fake.pids) == 3, "a third spawn")
            await wait_until(lambda: eng.lifecycle.ready, "the engine is ready again")
            return "".join(c.text for c in await collect(eng, HI))
        finally:
            await eng.close()

    assert run(scenario) == "ok"
    assert any("did not load within 0.5s" in reason for reason in reasons), reasons
    assert all(reaped(pid) for pid in fake.pids)


def test_close_of_a_stopped_process_with_unread_requests_kills_it(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(isolated, "CLOSE_GRACE", 0.2)
    monkeypatch.setattr(isolated, "KILL_AFTER", 0.2)
    monkeypatch.setattr(isolated, "MAX_UNSENT", 1 << 20)
    eng = IsolatedEngine(SPEC, SETTINGS)
    big = GenerationParams(prompt="x" * (1 << 19), max_tokens=4)

    def no_blocking_wait(*args: object, **kwargs: object) -> int:
        raise AssertionError("Popen.wait() would block the event loop")

    async def scenario() -> None:
        await eng.start()
        pid = eng.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        waiting: list[asyncio.Task[list[Chunk]]] = []
        refused: BaseException | None = None
        for _ in range(64):  # 32 MiB, far past the limit
            task = asyncio.create_task(collect(eng, big))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if task.done():
                refused = task.exception()
                break
            waiting.append(task)
        assert isinstance(refused, ServiceUnavailableError)
        assert refused.retry_after is not None
        assert waiting  # the limit let requests through first
        monkeypatch.setattr(subprocess.Popen, "wait", no_blocking_wait)
        await eng.close()  # the close frame cannot reach it: SIGTERM, then SIGKILL
        assert reaped(pid)
        assert eng.lifecycle.state is EngineState.STOPPED
        for task in waiting:
            with pytest.raises(ServiceUnavailableError) as shutting_down:
                await task
            assert shutting_down.value.retry_after is not None

    run(scenario)


def test_a_cancelled_close_still_ends_the_process_and_a_second_close_waits_for_it(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(isolated, "CLOSE_GRACE", 0.2)
    monkeypatch.setattr(isolated, "KILL_AFTER", 0.2)
    eng = IsolatedEngine(SPEC, SETTINGS)

    async def scenario() -> None:
        await eng.start()
        pid = eng.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it will need SIGKILL
        first = asyncio.create_task(eng.close())
        await wait_until(lambda: eng.lifecycle.state is EngineState.STOPPING, "closing")
        second = asyncio.create_task(eng.close())
        first.cancel()  # as the router cancels its unload tasks at shutdown
        with pytest.raises(asyncio.CancelledError):
            await first
        await second
        assert reaped(pid)
        assert eng.lifecycle.state is EngineState.STOPPED
        with pytest.raises(ServiceUnavailableError) as refused:
            await collect(eng, HI)
        assert refused.value.retry_after is not None

    run(scenario)


def test_a_close_while_it_loads_ends_the_process_it_was_loading(fake: Fake) -> None:
    fake.plan({"wait_for": "go"})
    eng = IsolatedEngine(SPEC, SETTINGS)

    async def scenario() -> None:
        starting = asyncio.create_task(eng.start())
        await wait_until(lambda: bool(fake.pids), "the engine process started")
        await eng.close()
        (fake.home / "go").touch()  # now it answers "loaded"
        with pytest.raises(ServiceUnavailableError, match="shutting down"):
            await starting
        assert eng.pid is None
        assert eng.lifecycle.state is EngineState.STOPPED
        assert reaped(fake.pids[0])

    run(scenario)


def test_the_engine_process_gets_no_secrets(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_ROUTER__WEBHOOK_SECRET_ENV", "MY_SECRET")
    monkeypatch.setenv("MY_SECRET", "hunter2")
    monkeypatch.setenv("BASTION_API_KEY", "sk-parent-only")
    monkeypatch.setenv("HF_TOKEN", "hf_parent_only")
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    eng = IsolatedEngine(SPEC, SETTINGS)

    async def scenario() -> dict[str, str]:
        await eng.start()
        try:
            assert eng.pid is not None
            return environ_of(eng.pid)
        finally:
            await eng.close()

    env = run(scenario)
    for secret in ("MY_SECRET", "BASTION_API_KEY", "HF_TOKEN"):
        assert secret not in env
    assert "hunter2" not in "".join(env.values())
    assert env["BASTION_HOME"] == str(tmp_path)
    assert env["OMP_NUM_THREADS"] == "3"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PATH"] == os.environ["PATH"]
