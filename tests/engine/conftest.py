"""Both built-in models' GGUF files, for tests of what depends on their vocabularies."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.catalog import BUILTIN_MODELS, GEMMA3
from bastion.store.package import import_from_package, verify_local


@pytest.fixture(scope="session")
def gemma3_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M, assembled from its packages into a throwaway store."""
    home = tmp_path_factory.mktemp("gemma-home")
    model = BUILTIN_MODELS[GEMMA3]
    import_from_package(home, model)
    return verify_local(home, model).weights
