"""Disconnects, liveness under load and the SIGTERM drain, on real server processes."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import Server, start_server

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
# Greedy counting never reaches an end-of-text token within these budgets.
COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def test_client_disconnect_stops_generation(server: Server) -> None:
    body = {"model": MODEL, "prompt": COUNT, "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.v1}/completions", json=body, timeout=60) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: {") for line in received)
    pattern = rf"\[{request_id}\] generation cancelled by the client after (\d+) of 1500 tokens"
    generated = int(server.wait_for_log(pattern).group(1))
    assert generated < 1500
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_non_streaming_disconnect_stops_generation(server: Server) -> None:
    body = {"model": MODEL, "prompt": COUNT, "max_tokens": 1400, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.v1}/completions", json=body, timeout=1.0)
    generated = int(
        server.wait_for_log(r"generation cancelled by the client after (\d+) of 1400 tokens").group(
            1
        )
    )
    assert generated < 1400


def test_health_ready_and_models_answer_while_every_slot_is_busy(server: Server) -> None:
    finished: list[str] = []
    client = server.client(timeout=120)

    def long_stream() -> None:
        stream = client.completions.create(
            model=MODEL, prompt=COUNT, max_tokens=400, temperature=0, stream=True
        )
        finished.append(list(stream)[-1].choices[0].finish_reason or "")

    threads = [threading.Thread(target=long_stream) for _ in range(6)]  # 4 slots + 2 queued
    for thread in threads:
        thread.start()
    try:
        server.wait_for_log(r"POST /v1/completions 200")  # streams have begun
        assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{server.base_url}/ready", timeout=10).status_code == 200
        assert httpx.get(f"{server.v1}/models", timeout=10).json()["data"][0]["id"] == MODEL
        assert len(finished) < 6, "the probes must run while generations are in flight"
    finally:
        for thread in threads:
            thread.join(timeout=180)
    assert finished == ["length"] * 6


def test_sigterm_lets_a_running_stream_finish_then_exits_zero(shared_home: Path) -> None:
    server = start_server(shared_home)
    try:
        client: OpenAI = server.client(timeout=120)
        stream = client.completions.create(
            model=MODEL,
            prompt=COUNT,
            max_tokens=300,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = iter(stream)
        next(chunks)
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_log(r"Shutting down")
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(f"{server.base_url}/health", timeout=5)
        rest = list(chunks)
        assert rest[-1].usage is not None
        assert rest[-1].usage.completion_tokens == 300
        assert rest[-2].choices[0].finish_reason == "length"
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()


def test_sigterm_drain_timeout_bounds_the_wait(shared_home: Path) -> None:
    server = start_server(shared_home, env={"BASTION_SERVER__DRAIN_TIMEOUT": "1"})
    try:
        body = {
            "model": MODEL,
            "prompt": COUNT,
            "max_tokens": 1900,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream("POST", f"{server.v1}/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            server.process.send_signal(signal.SIGTERM)
            received = []
            with pytest.raises(httpx.RemoteProtocolError):
                received.extend(lines)  # the server cuts the stream once the drain ends
        tokens = [json.loads(line[6:]) for line in received if line.startswith("data: {")]
        assert len(tokens) < 1900
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
