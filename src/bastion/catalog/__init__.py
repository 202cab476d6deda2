"""The model catalog: which models bastion knows and where their files come from."""

from bastion.catalog.model_def import BUILTIN_MODELS, ModelDef, builtin_model

__all__ = ["BUILTIN_MODELS", "ModelDef", "builtin_model"]
