"""Many clients, one model: batching, time slicing and the bounded queue over real sockets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, start_server

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def wait_for_status(server: Server, predicate: str, timeout: float = 60) -> None:
    """Poll /api/status until ``predicate`` (a key=value on the model's state) holds."""
    key, value = predicate.split("=")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.base_url}/api/status").json()["models"][MODEL]
        if str(state.get(key)) == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"status never had {predicate}")


@pytest.fixture
def one_slot_one_queued(shared_home: Path) -> Iterator[Server]:
    server = start_server(
        shared_home,
        "--slots",
        "1",
        env={"BASTION_ROUTER__MAX_QUEUE": "1", "BASTION_ENGINE__TIME_SLICE": "0"},
    )
    try:
        yield server
    finally:
        server.stop()


def test_queue_overflow_is_429_and_queued_requests_still_complete(
    one_slot_one_queued: Server,
) -> None:
    server = one_slot_one_queued
    client = server.client(timeout=120)
    results: dict[str, str] = {}

    def long(name: str) -> None:
        stream = client.completions.create(
            model=MODEL, prompt=COUNT, max_tokens=150, temperature=0, stream=True
        )
        results[name] = list(stream)[-1].choices[0].finish_reason or ""

    first = threading.Thread(target=long, args=("running",))
    first.start()
    wait_for_status(server, "running=1")
    second = threading.Thread(target=long, args=("queued",))
    second.start()
    wait_for_status(server, "waiting=1")
    try:
        with pytest.raises(openai.RateLimitError) as info:
            client.completions.create(model=MODEL, prompt="hi", max_tokens=5)
        assert info.value.status_code == 429
        assert info.value.code == "queue_full"
        assert int(info.value.response.headers["retry-after"]) >= 1
    finally:
        first.join(timeout=180)
        second.join(timeout=180)
    assert results == {"running": "length", "queued": "length"}


@pytest.fixture
def four_slots_sliced(shared_home: Path) -> Iterator[Server]:
    server = start_server(shared_home, "--slots", "4", env={"BASTION_ENGINE__TIME_SLICE": "0.5"})
    try:
        yield server
    finally:
        server.stop()


def test_eight_clients_on_four_slots_all_start_before_any_finishes(
    four_slots_sliced: Server,
) -> None:
    client = four_slots_sliced.client(timeout=300)
    first_token: list[float] = []
    done: list[float] = []
    reasons: list[str] = []
    lock = threading.Lock()

    def stream() -> None:
        chunks = client.completions.create(
            model=MODEL, prompt=COUNT, max_tokens=250, temperature=0, stream=True
        )
        for i, chunk in enumerate(chunks):
            if i == 0:
                with lock:
                    first_token.append(time.monotonic())
            last = chunk
        with lock:
            done.append(time.monotonic())
            reasons.append(last.choices[0].finish_reason or "")

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert reasons == ["length"] * 8  # nobody failed or was cut short
    assert max(first_token) < min(done)  # nobody waited for a whole stream to end


def test_same_text_alone_and_batched_through_the_api(server: Server) -> None:
    client = server.client(timeout=120)
    questions = ["Name a colour.", "Name a fruit.", "Name a city.", "Name a planet."]

    def ask(question: str) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            temperature=0,
            max_tokens=30,
            messages=[{"role": "user", "content": question}],
        )
        return reply.choices[0].message.content or ""

    alone = [ask(q) for q in questions]
    batched: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda i=i, q=q: batched.__setitem__(i, ask(q)))
        for i, q in enumerate(questions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [batched[i] for i in range(4)] == alone


def test_multi_turn_chat_reports_cached_prompt_tokens(server: Server) -> None:
    client = server.client(timeout=120)
    messages = [{"role": "user", "content": "Remember the word lighthouse."}]
    cached = []
    for turn in range(3):
        reply = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=12, messages=messages
        )
        assert reply.usage is not None
        details = reply.usage.prompt_tokens_details
        cached.append(details.cached_tokens if details else 0)
        messages += [
            {"role": "assistant", "content": reply.choices[0].message.content or ""},
            {"role": "user", "content": f"Turn {turn}: say it again."},
        ]
    assert cached[1] > 0
    assert cached[2] > cached[1]
