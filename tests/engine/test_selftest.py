"""The self-test before serving: what counts as broken output, and what a failure does.

A CPU whose kernels compute garbage cannot be summoned here, so the failure tests make
llama.cpp's logits read back as NaN (what a broken kernel produces) or its decode fail, on the
real model, and check that the model is refused with that reason rather than served.
"""

from __future__ import annotations

import asyncio
import ctypes
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from bastion.catalog import SMOLLM2, load_catalog
from bastion.engine.base import Engine, ModelSpec
from bastion.engine.factory import build_engine
from bastion.engine.llamacpp import LlamaCppEngine
from bastion.engine.llamacpp.selftest import logits_problem
from bastion.errors import ModelLoadError
from bastion.router.registry import ModelRegistry
from bastion.settings import EngineSettings, RouterSettings

SETTINGS = EngineSettings(threads=2, slots=1, ctx_per_slot=512)


def test_finite_varied_logits_pass() -> None:
    assert logits_problem(np.array([0.5, -2.0, 3.25], dtype=np.float32)) is None


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([0.5, float("nan"), 1.0], "1 of 3 logits are NaN or infinite"),
        ([float("inf"), float("-inf"), 1.0], "2 of 3 logits are NaN or infinite"),
        ([0.0, 0.0, 0.0], "every logit has the same value"),
        ([], "every logit has the same value"),
    ],
)
def test_broken_logits_are_named(values: list[float], problem: str) -> None:
    assert logits_problem(np.array(values, dtype=np.float32)) == problem


@pytest.fixture
def nan_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every logits row llama.cpp hands back reads as NaN."""
    rows = (ctypes.c_float * 262_144)(*([float("nan")] * 262_144))
    pointer = ctypes.cast(rows, ctypes.POINTER(ctypes.c_float))
    monkeypatch.setattr(llama_cpp, "llama_get_logits_ith", lambda ctx, i: pointer)


def test_nan_logits_fail_the_load_with_the_reason(smollm2_file: Path, nan_logits: None) -> None:
    engine = LlamaCppEngine("smollm2", smollm2_file, "0" * 64, SETTINGS)
    with pytest.raises(ModelLoadError, match=r"failed its self-test: .* logits are NaN") as info:
        asyncio.run(engine.start())
    assert "not served" in info.value.message
    assert not engine.ready


def test_a_failing_decode_fails_the_load(
    smollm2_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llama_cpp, "llama_decode", lambda ctx, batch: -3)
    engine = LlamaCppEngine("smollm2", smollm2_file, "0" * 64, SETTINGS)
    with pytest.raises(ModelLoadError, match="llama_decode returned -3 at step 0"):
        asyncio.run(engine.start())


def test_the_registry_marks_the_model_failed_with_the_reason(home: Path, nan_logits: None) -> None:
    """In-process (``thread``): the patched llama.cpp function lives in this process."""

    def build(spec: ModelSpec) -> Engine:
        return build_engine(spec, SETTINGS.model_copy(update={"isolation": "thread"}))

    async def load() -> dict[str, dict[str, object]]:
        catalog = load_catalog(home)
        registry = ModelRegistry(home, catalog, SMOLLM2, build, RouterSettings())
        registry.start()
        await registry.wait_loaded()
        try:
            assert not registry.ready
            return registry.states(detail=True)
        finally:
            await registry.close()

    state = asyncio.run(load())[SMOLLM2]
    assert state["state"] == "failed"
    assert "failed its self-test" in str(state["error"])
