"""Which models chat: a template from the catalog or the GGUF, else completion only.

Gemma 3 270M (base) carries no chat template and SmolLM2 does; neither is ever given ChatML in
place of a template it lacks, since a base model then echoes the format's markers as text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bastion.engine import chat_template as chat_template_module
from bastion.engine.base import ChatMessage, Chunk, GenerationParams, SamplingParams
from bastion.engine.chat_template import CHATML
from bastion.engine.llamacpp import LlamaCppEngine
from bastion.errors import ModelNotChatError
from bastion.settings import EngineSettings

SETTINGS = EngineSettings(threads=2, slots=1, ctx_per_slot=512)
GREEDY = SamplingParams(temperature=0.0)
ASK = (ChatMessage("user", "What is 2+2?"),)


@contextmanager
def loaded(
    weights: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> Iterator[tuple[LlamaCppEngine, list[str]]]:
    """A started engine and the template sources it started a worker for."""
    started: list[str] = []

    class Counting(chat_template_module.ChatTemplate):
        def __init__(self, source: str, **rest: Any) -> None:
            started.append(source)
            super().__init__(source, **rest)

    monkeypatch.setattr("bastion.engine.llamacpp.prompt.ChatTemplate", Counting)
    engine = LlamaCppEngine("m", weights, "0" * 64, SETTINGS, **kwargs)
    asyncio.run(engine.start())
    try:
        yield engine, started
    finally:
        asyncio.run(engine.close())


def run(engine: LlamaCppEngine, **kwargs: Any) -> list[Chunk]:
    async def collect() -> list[Chunk]:
        params = GenerationParams(sampling=GREEDY, max_tokens=4, **kwargs)
        return [chunk async for chunk in engine.generate(params)]

    return asyncio.run(collect())


def refuses_chat(engine: LlamaCppEngine) -> None:
    assert engine.info.chat is False
    for messages in (ASK, (ChatMessage("system", "Be terse."), *ASK)):
        with pytest.raises(ModelNotChatError) as info:
            run(engine, messages=messages)
        assert info.value.param == "model"
        assert info.value.status == 400


def test_a_model_without_a_template_is_completion_only_and_starts_no_worker(
    gemma3_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"), loaded(gemma3_file, monkeypatch) as (engine, started):
        refuses_chat(engine)
        last = run(engine, prompt="The capital of France is")[-1]
        assert last.completion_tokens > 0
        assert started == []
    assert "completion only (it carries no chat template)" in caplog.text


def test_the_catalog_marking_a_base_model_wins_over_a_template_in_the_gguf(
    smollm2_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level("INFO"),
        loaded(smollm2_file, monkeypatch, completion_only=True) as (
            engine,
            started,
        ),
    ):
        refuses_chat(engine)
        assert run(engine, prompt="Once upon a time")[-1].completion_tokens > 0
        assert started == []
    assert "completion only (the catalog marks it as a base model)" in caplog.text


def test_a_catalog_template_makes_a_model_without_one_chat(
    gemma3_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with loaded(gemma3_file, monkeypatch, chat_template=CHATML) as (engine, started):
        assert engine.info.chat is True
        assert run(engine, messages=ASK)[-1].prompt_tokens > 0
        assert started == [CHATML]


def test_a_model_with_its_own_template_still_chats(
    smollm2_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with loaded(smollm2_file, monkeypatch) as (engine, started):
        assert engine.info.chat is True
        assert run(engine, messages=ASK)[-1].completion_tokens > 0
        assert len(started) == 1
        assert "<|im_start|>" in started[0]  # SmolLM2's own, which happens to be ChatML-like
        assert started[0] != CHATML
