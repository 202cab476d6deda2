"""The model catalog: which models bastion knows and where their files come from."""

from bastion.catalog.catalog import Catalog, load_catalog
from bastion.catalog.model_def import (
    BUILTIN_MODELS,
    GEMMA3,
    SMOLLM2,
    HfSource,
    ModelDef,
    PackageSource,
    UrlSource,
)

__all__ = [
    "BUILTIN_MODELS",
    "GEMMA3",
    "SMOLLM2",
    "Catalog",
    "HfSource",
    "ModelDef",
    "PackageSource",
    "UrlSource",
    "load_catalog",
]
