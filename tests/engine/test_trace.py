"""The engine's opt-in step trace: JSON lines from a real generation, nothing when off."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bastion.engine.base import GenerationParams, SamplingParams
from bastion.engine.llamacpp import LlamaCppEngine
from bastion.engine.llamacpp.trace import ENV, open_trace
from bastion.settings import EngineSettings

TOKENS = 6
FIELDS = {"t", "decode", "prefill", "running", "active", "decode_ms", "gap_ms"}


def generate(model: Path, prompts: list[str]) -> list[int]:
    """Start an engine, run ``prompts`` concurrently, close it; completion token counts."""

    async def main() -> list[int]:
        engine = LlamaCppEngine(
            "smollm2", model, "0" * 64, EngineSettings(threads=2, slots=2, ctx_per_slot=512)
        )
        await engine.start()
        try:

            async def one(prompt: str) -> int:
                params = GenerationParams(
                    prompt=prompt, max_tokens=TOKENS, sampling=SamplingParams(temperature=0.0)
                )
                chunks = [chunk async for chunk in engine.generate(params)]
                return chunks[-1].completion_tokens

            return list(await asyncio.gather(*(one(p) for p in prompts)))
        finally:
            await engine.close()

    return asyncio.run(main())


def test_trace_records_every_step_of_a_generation(
    smollm2_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trace" / "steps.jsonl"
    monkeypatch.setenv(ENV, str(path))
    assert generate(smollm2_file, ["Once upon a time", "The capital of France is"]) == [6, 6]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records
    assert all(set(r) == FIELDS for r in records)
    # Both prompts are prefilled, then every generated token but the last of each stream
    # is decoded: 2 x (6 - 1) decode tokens in all.
    assert sum(r["decode"] for r in records) == 2 * (TOKENS - 1)
    assert records[0]["prefill"] > 0
    assert records[0]["decode"] == 0
    assert all(r["prefill"] >= 0 and r["decode_ms"] > 0 and r["gap_ms"] >= 0 for r in records)
    assert all(r["decode"] <= r["running"] <= 2 and r["running"] <= r["active"] for r in records)
    assert records[0]["gap_ms"] == 0
    times = [r["t"] for r in records]
    assert times == sorted(times)


def test_nothing_is_written_when_off(
    smollm2_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert generate(smollm2_file, ["Once upon a time"]) == [TOKENS]
    assert list(tmp_path.iterdir()) == []


def test_an_empty_setting_is_off(tmp_path: Path) -> None:
    def decode(ctx: object, batch: object) -> int:
        return 0

    assert open_trace(decode, {ENV: "  "}) == (None, decode)
    trace, timed = open_trace(decode, {ENV: str(tmp_path / "t.jsonl")})
    assert trace is not None
    assert timed is not decode
