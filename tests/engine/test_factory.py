"""The one map from engine kind to builder, and the per-model settings it applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.engine.base import ModelSpec
from bastion.engine.factory import BUILDERS, build_engine, model_settings
from bastion.errors import ModelLoadError
from bastion.settings import EngineSettings

SETTINGS = EngineSettings(slots=4, ctx_per_slot=4096)


def spec(**kwargs: object) -> ModelSpec:
    fields: dict[str, object] = {"name": "m", "kind": "llamacpp", "weights": Path("/m.gguf")}
    fields.update(kwargs)
    return ModelSpec(**fields)  # type: ignore[arg-type]


def test_engine_args_ctx_and_repack_apply_to_that_model_only() -> None:
    mine = model_settings(
        spec(engine_args={"slots": 2, "prefix_cache": False}, ctx=1024, repack="off"), SETTINGS
    )
    assert (mine.slots, mine.prefix_cache, mine.ctx_per_slot, mine.repack) == (
        2,
        False,
        1024,
        "off",
    )
    assert (SETTINGS.slots, SETTINGS.ctx_per_slot) == (4, 4096)
    assert model_settings(spec(), SETTINGS) is SETTINGS


@pytest.mark.parametrize(
    ("args", "named"),
    [({"n_gpu_layers": 10}, "n_gpu_layers"), ({"slots": 0}, "slots"), ({"slots": "x"}, "slots")],
)
def test_an_engine_arg_it_cannot_take_fails_the_load_by_name(
    args: dict[str, object], named: str
) -> None:
    with pytest.raises(ModelLoadError, match=named):
        model_settings(spec(engine_args=args), SETTINGS)


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"no engine of kind 'vllm' \(known: llamacpp\)"):
        build_engine(spec(kind="vllm"), SETTINGS)


def test_llamacpp_refuses_a_model_without_weights_and_lora_adapters() -> None:
    with pytest.raises(ModelLoadError, match="needs a weights file"):
        build_engine(spec(weights=None), SETTINGS)
    with pytest.raises(ModelLoadError, match="LoRA"):
        build_engine(spec(lora=(Path("/a.gguf"),)), SETTINGS)


@pytest.mark.parametrize(
    ("isolation", "cls"), [("process", "IsolatedEngine"), ("thread", "LlamaCppEngine")]
)
def test_isolation_decides_where_the_embedded_engine_runs(isolation: str, cls: str) -> None:
    engine = build_engine(spec(), SETTINGS.model_copy(update={"isolation": isolation}))
    assert type(engine).__name__ == cls  # built, not started: nothing loads


def test_every_kind_in_the_map_is_a_catalog_engine_kind() -> None:
    from typing import get_args  # noqa: PLC0415

    from bastion.catalog import ModelDef  # noqa: PLC0415

    kinds = set(get_args(ModelDef.model_fields["engine"].annotation))
    assert set(BUILDERS) == kinds
