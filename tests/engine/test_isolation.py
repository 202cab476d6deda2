"""The embedded engine in its own process (``IsolatedEngine``) on the real SmolLM2 model: same
answers as in-process, errors keep their class, cancellation, crash supervision, close."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.engine.base import (
    ChatMessage,
    Chunk,
    EngineState,
    GenerationParams,
    ModelSpec,
    SamplingParams,
)
from bastion.engine.factory import build_engine
from bastion.engine.isolation import IsolatedEngine
from bastion.errors import (
    ContextLengthExceededError,
    EngineError,
    InvalidParameterError,
    ModelLoadError,
    ServiceUnavailableError,
)
from bastion.log import request_id_var
from bastion.settings import EngineSettings
from tests.engine.processes import gone, wait_until

CTX = 1024
GREEDY = SamplingParams(temperature=0.0)
N_VOCAB = 49152  # SmolLM2's
SETTINGS = EngineSettings(threads=2, slots=2, ctx_per_slot=CTX, restart_backoff=0.05)


def spec(weights: Path, name: str = "smollm2") -> ModelSpec:
    return ModelSpec(name, "llamacpp", weights, "0" * 64)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module: an isolated engine is bound to the loop that started it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(smollm2_file: Path, loop: asyncio.AbstractEventLoop) -> Iterator[IsolatedEngine]:
    eng = build_engine(spec(smollm2_file), SETTINGS)
    assert isinstance(eng, IsolatedEngine)  # isolation: process is the default
    loop.run_until_complete(eng.start())
    yield eng
    loop.run_until_complete(eng.close())


async def collect(engine: IsolatedEngine, params: GenerationParams) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(params)]


def test_greedy_text_equals_the_in_process_engine(
    engine: IsolatedEngine, smollm2_file: Path, loop: asyncio.AbstractEventLoop
) -> None:
    prompts = [
        GenerationParams(prompt="The capital of France is", sampling=GREEDY, max_tokens=24),
        GenerationParams(
            messages=(ChatMessage("user", "What is 2+2? Respond with only the number."),),
            sampling=GREEDY,
            max_tokens=16,
        ),
    ]
    isolated = [loop.run_until_complete(collect(engine, p)) for p in prompts]
    thread = build_engine(spec(smollm2_file), SETTINGS.model_copy(update={"isolation": "thread"}))
    assert not isinstance(thread, IsolatedEngine)
    loop.run_until_complete(thread.start())
    try:
        in_process = [loop.run_until_complete(collect(thread, p)) for p in prompts]  # type: ignore[arg-type]
    finally:
        loop.run_until_complete(thread.close())
    for ours, theirs in zip(isolated, in_process, strict=True):
        assert "".join(c.text for c in ours) == "".join(c.text for c in theirs)
        assert (ours[-1].finish_reason, ours[-1].completion_tokens) == (
            theirs[-1].finish_reason,
            theirs[-1].completion_tokens,
        )
    assert "4" in "".join(c.text for c in isolated[1])
    assert engine.info.context_length == CTX
    assert engine.info.memory > 0


def test_streams_chunks_with_logprobs(
    engine: IsolatedEngine, loop: asyncio.AbstractEventLoop
) -> None:
    params = GenerationParams(prompt="Once upon a time", sampling=GREEDY, max_tokens=12, logprobs=2)
    chunks = loop.run_until_complete(collect(engine, params))
    assert len(chunks) > 1
    assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert chunks[-1].completion_tokens == 12
    logprobs = [lp for c in chunks for lp in c.logprobs]
    assert len(logprobs) == 12
    assert all(len(lp.top) == 2 and lp.top[0].token == lp.token for lp in logprobs)
    assert all(isinstance(lp.bytes, tuple) for lp in logprobs)


def test_caller_errors_keep_their_class_and_param(
    engine: IsolatedEngine, loop: asyncio.AbstractEventLoop
) -> None:
    with pytest.raises(ContextLengthExceededError) as overflow:
        loop.run_until_complete(
            collect(engine, GenerationParams(prompt="hello", sampling=GREEDY, max_tokens=CTX))
        )
    assert overflow.value.param == "max_tokens"
    assert overflow.value.status == 400
    bias = SamplingParams(temperature=0.0, logit_bias=((N_VOCAB, 1.0),))
    with pytest.raises(InvalidParameterError) as out_of_vocab:
        loop.run_until_complete(
            collect(engine, GenerationParams(prompt="hi", sampling=bias, max_tokens=1))
        )
    assert out_of_vocab.value.param == "logit_bias"
    assert engine.running == 0


def test_a_client_that_goes_away_frees_its_slot_and_the_log_names_its_request(
    smollm2_file: Path,
    loop: asyncio.AbstractEventLoop,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its own engine: the engine process writes to the stderr it inherits when it starts, at
    # the log level of this process then.
    caplog.set_level(logging.INFO)
    eng = IsolatedEngine(spec(smollm2_file), SETTINGS)

    async def scenario() -> None:
        await eng.start()
        request_id_var.set("req-isolation-cancel")
        stream = eng.generate(
            GenerationParams(prompt="Tell a long story.", sampling=GREEDY, max_tokens=900)
        )
        await anext(stream)
        await wait_until(lambda: eng.running == 1, "the stream runs")
        await stream.aclose()  # the client disconnected
        await wait_until(lambda: eng.running == 0, "the slot is free again")
        chunks = await collect(eng, GenerationParams(prompt="Hi", sampling=GREEDY, max_tokens=3))
        assert chunks[-1].finish_reason == "length"

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.run_until_complete(eng.close())
    # The child's log line carries the request id that travelled with the request.
    line = next(x for x in capfd.readouterr().err.splitlines() if "cancelled by the client" in x)
    assert "[req-isolation-cancel]" in line


def test_kill_9_mid_stream_fails_the_stream_then_restarts(
    smollm2_file: Path, loop: asyncio.AbstractEventLoop
) -> None:
    # One slot, no time slicing: a second request waits in the engine process, unanswered.
    eng = IsolatedEngine(
        spec(smollm2_file), SETTINGS.model_copy(update={"slots": 1, "time_slice": 0})
    )
    states: list[EngineState] = []
    eng.lifecycle.listen(lambda state, reason: states.append(state))

    async def scenario() -> str:
        await eng.start()
        first = eng.pid
        assert first is not None
        stream = eng.generate(GenerationParams(prompt="Count:", sampling=GREEDY, max_tokens=900))
        await anext(stream)
        waiting = asyncio.create_task(collect(eng, GenerationParams(prompt="Hi", max_tokens=4)))
        await asyncio.sleep(0.1)  # its request is on the way to the engine process
        assert not waiting.done()
        os.kill(first, signal.SIGKILL)
        with pytest.raises(EngineError):  # mid-stream: the SSE error event
            async for _ in stream:
                pass
        with pytest.raises(ServiceUnavailableError):  # before its first chunk: a 503
            await waiting
        # While it restarts, requests are refused at once rather than left hanging.
        assert eng.lifecycle.state is EngineState.STARTING
        with pytest.raises(ServiceUnavailableError, match="restarting"):
            await collect(eng, GenerationParams(prompt="hi", max_tokens=1))
        await wait_until(lambda: eng.lifecycle.ready, "the engine is ready again")
        assert eng.pid not in (None, first)
        assert gone(first)
        chunks = await collect(
            eng, GenerationParams(prompt="The capital of France is", sampling=GREEDY, max_tokens=8)
        )
        return chunks[-1].finish_reason or ""

    try:
        assert loop.run_until_complete(scenario()) == "length"
    finally:
        loop.run_until_complete(eng.close())
    assert states[:5] == [
        EngineState.STARTING,
        EngineState.READY,
        EngineState.FAILED,
        EngineState.STARTING,
        EngineState.READY,
    ]
    assert eng.lifecycle.state is EngineState.STOPPED


def test_restart_limit_zero_leaves_it_failed(
    smollm2_file: Path, loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    eng = IsolatedEngine(spec(smollm2_file), SETTINGS.model_copy(update={"restart_limit": 0}))

    async def scenario() -> None:
        await eng.start()
        assert eng.pid is not None
        os.kill(eng.pid, signal.SIGKILL)
        await wait_until(lambda: "no restarts left" in caplog.text, "the give-up line")
        assert eng.lifecycle.state is EngineState.FAILED
        assert "died of SIGKILL" in eng.lifecycle.reason
        assert eng.pid is None
        with pytest.raises(ServiceUnavailableError):
            await collect(eng, GenerationParams(prompt="hi", max_tokens=1))

    caplog.set_level(logging.INFO)
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.run_until_complete(eng.close())
    assert "died of SIGKILL (signal 9)" in caplog.text
    assert caplog.text.count("engine process for smollm2 started") == 1


def test_close_leaves_no_process_behind(
    smollm2_file: Path, loop: asyncio.AbstractEventLoop
) -> None:
    eng = IsolatedEngine(spec(smollm2_file), SETTINGS)
    loop.run_until_complete(eng.start())
    pid = eng.pid
    assert pid is not None
    # The chat-template worker is the engine process's own child.
    children = [
        int(c)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]
    assert children
    loop.run_until_complete(eng.close())
    assert eng.lifecycle.state is EngineState.STOPPED
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped
    deadline = time.monotonic() + 10
    while not all(gone(c) for c in children):
        assert time.monotonic() < deadline, f"left behind: {children}"
        time.sleep(0.05)


def test_a_file_that_is_not_gguf_fails_the_load_without_restarts(
    tmp_path: Path, loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    eng = IsolatedEngine(spec(bad, "broken"), SETTINGS)
    caplog.set_level(logging.INFO)
    with pytest.raises(ModelLoadError):
        loop.run_until_complete(eng.start())
    assert eng.lifecycle.state is EngineState.FAILED
    loop.run_until_complete(asyncio.sleep(0.3))  # several backoffs: a restart would show now
    assert caplog.text.count("engine process for broken started") == 1
    assert eng.lifecycle.state is EngineState.FAILED
    loop.run_until_complete(eng.close())


def test_the_engine_process_dies_with_its_parent(smollm2_file: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from bastion.engine.base import ModelSpec
        from bastion.engine.isolation import IsolatedEngine
        from bastion.settings import EngineSettings

        async def main():
            spec = ModelSpec("smollm2", "llamacpp", Path({str(smollm2_file)!r}), "0" * 64)
            eng = IsolatedEngine(spec, EngineSettings(threads=1, slots=1, ctx_per_slot=256))
            await eng.start()
            print(eng.pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while not gone(child):
            assert time.monotonic() < deadline, "the engine process outlived its parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
