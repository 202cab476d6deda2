"""The one place that maps an engine kind (``ModelDef.engine``) to the code that builds it.

Nothing else names a concrete engine class: the router asks ``build_engine`` for an engine and
sees only the ``Engine`` protocol, whatever runs behind it (the embedded llama.cpp engine in
this process or in a supervised child, and later supervised servers and remote upstreams).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from bastion.engine.base import Engine, ModelSpec
from bastion.errors import ModelLoadError
from bastion.settings import EngineSettings

Builder = Callable[[ModelSpec, EngineSettings], Engine]

PER_MODEL_SETTINGS = frozenset(
    {
        "threads",
        "slots",
        "ctx_per_slot",
        "default_max_tokens",
        "max_tokens_limit",
        "time_slice",
        "prefix_cache",
        "stream_interval",
        "batch_tokens",
        "prefill_chunk",
        "repack",
        "isolation",
    }
)
"""``engine`` settings a catalog entry's ``engine_args`` may set for its model alone."""


def model_settings(spec: ModelSpec, settings: EngineSettings) -> EngineSettings:
    """``settings`` with the model's own choices applied: its ``engine_args``, then its
    catalog ``ctx`` and ``repack``. An unknown or invalid argument fails the load by name."""
    args: Mapping[str, Any] = spec.engine_args
    unknown = sorted(set(args) - PER_MODEL_SETTINGS)
    if unknown:
        raise ModelLoadError(
            f"model '{spec.name}': engine_args {', '.join(unknown)} mean nothing to the "
            f"{spec.kind} engine (it takes {', '.join(sorted(PER_MODEL_SETTINGS))})"
        )
    update: dict[str, Any] = dict(args)
    if spec.ctx is not None:
        update["ctx_per_slot"] = spec.ctx
    if spec.repack is not None:
        update["repack"] = spec.repack
    if not update:
        return settings
    try:
        return EngineSettings.model_validate({**settings.model_dump(), **update})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ModelLoadError(f"model '{spec.name}': engine_args {where}: {first['msg']}") from None


def _llamacpp(spec: ModelSpec, settings: EngineSettings) -> Engine:
    if spec.weights is None:
        raise ModelLoadError(f"model '{spec.name}': the llamacpp engine needs a weights file")
    if spec.lora:
        raise ModelLoadError(
            f"model '{spec.name}': the llamacpp engine does not apply LoRA adapters yet; "
            "remove `lora` from its catalog entry"
        )
    settings = model_settings(spec, settings)
    # Imported here: each pulls in its own heavy modules (llama.cpp, multiprocessing).
    if settings.isolation == "process":
        from bastion.engine.isolation import IsolatedEngine  # noqa: PLC0415

        return IsolatedEngine(spec, settings)
    from bastion.engine.llamacpp import LlamaCppEngine  # noqa: PLC0415

    return LlamaCppEngine.from_spec(spec, settings)


BUILDERS: dict[str, Builder] = {"llamacpp": _llamacpp}


def build_engine(spec: ModelSpec, settings: EngineSettings) -> Engine:
    """An unstarted engine for ``spec``; ``ModelLoadError`` when its kind is unknown or its
    arguments do not fit."""
    builder = BUILDERS.get(spec.kind)
    if builder is None:
        raise ModelLoadError(
            f"model '{spec.name}': no engine of kind '{spec.kind}' "
            f"(known: {', '.join(sorted(BUILDERS))})"
        )
    return builder(spec, settings)
