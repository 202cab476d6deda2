"""Chat and text completions through the official openai SDK against a real server."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is 2+2? Respond with only the number."}]


def test_models_lists_the_catalog_loaded_first_with_digest_and_state(client: OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL, "gemma3-270m"]  # the whole catalog, loaded first
    extra = [m.model_extra or {} for m in models]
    assert extra[0]["state"] == "ready"
    assert extra[0]["digest"].startswith("sha256:")
    assert extra[1]["state"] == "stopped"  # loads on its first request


def test_chat_answers_two_plus_two(client: OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
    assert "4" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.system_fingerprint is not None
    assert reply.system_fingerprint.startswith("sha256:")


def test_model_may_be_omitted(server: Server) -> None:
    body = {"messages": QUESTION, "temperature": 0, "max_tokens": 4}
    response = httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert response.json()["model"] == MODEL


def test_streamed_chat_matches_plain_chat(client: OpenAI) -> None:
    plain = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=20
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=20, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)


def test_include_usage_adds_a_final_usage_chunk(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "length"


def test_stop_split_across_streamed_pieces_is_never_emitted(client: OpenAI) -> None:
    prompt = "Count from one to ten: one, two, three,"
    full = (
        client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=30)
        .choices[0]
        .text
    )
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt=prompt, temperature=0, max_tokens=30, stream=True
        )
    ]
    # A stop string that spans the boundary between two streamed pieces.
    boundary = len(pieces[0]) + len(pieces[1]) + len(pieces[2])
    stop = full[boundary - 2 : boundary + 2]
    assert len(stop) == 4
    assert full.find(stop) == boundary - 2, "pick a stop string that occurs once"
    streamed = list(
        client.completions.create(
            model=MODEL, prompt=prompt, temperature=0, max_tokens=30, stream=True, stop=[stop]
        )
    )
    text = "".join(c.choices[0].text for c in streamed)
    assert text == full[: boundary - 2]
    assert stop not in text
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_same_seed_gives_the_same_text(client: OpenAI) -> None:
    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            seed=seed,
            temperature=1.0,
            top_p=0.95,
            max_tokens=30,
            messages=[{"role": "user", "content": "Name an animal."}],
        )
        return reply.choices[0].message.content or ""

    assert sample(99) == sample(99)
    assert len({sample(1), sample(2), sample(3), sample(4)}) > 1


def test_chat_logprobs(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=3, logprobs=True, top_logprobs=2
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert len(logprobs.content) == reply.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(t.top_logprobs) == 2 for t in logprobs.content)
    assert "".join(t.token for t in logprobs.content) == reply.choices[0].message.content


def test_text_completion_with_echo_and_logprobs(client: OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=5, echo=True, logprobs=2
    )
    choice = reply.choices[0]
    assert choice.text.startswith("Once upon a time")
    assert choice.finish_reason == "length"
    assert choice.logprobs is not None
    assert len(choice.logprobs.tokens or []) == 5
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5


def test_every_sampling_parameter_is_accepted(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0.7,
        top_p=0.9,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        seed=3,
        max_completion_tokens=8,
        n=1,
        extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 8
