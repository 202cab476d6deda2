"""From a catalog entry and its verified files to what an engine builder receives."""

from __future__ import annotations

from pathlib import Path

from bastion.catalog import ModelDef
from bastion.engine.base import ModelSpec
from bastion.store.package import LocalModel, local_weights_name, model_dir


def model_spec(model: ModelDef, local: LocalModel) -> ModelSpec:
    """The ``ModelSpec`` of ``model`` once ``verify_local`` vouched for ``local``."""
    return ModelSpec(
        name=model.name,
        kind=model.engine,
        weights=local.weights,
        digest=local.sha256,
        identity=local.identity,
        ctx=local.ctx if local.ctx is not None else model.ctx,
        chat_template=local.chat_template,
        completion_only=local.completion_only,
        repack=local.repack if local.repack is not None else model.repack,
        engine_args=dict(model.engine_args),
        lora=tuple(model.lora),
    )


def weights_on_disk(home: Path, model: ModelDef) -> int:
    """Bytes of ``model``'s weights file if it is already where a load will find it, else 0:
    the memory estimate of a model that has never been loaded (nor verified) here."""
    try:
        if model.local_path is not None:
            path = model.local_path / local_weights_name(model)
        elif model.weights_name is not None:
            path = model_dir(home, model.name) / model.weights_name
        else:
            return 0
        return path.stat().st_size
    except Exception:  # noqa: BLE001 - an estimate: any failure means "unknown"
        return 0
