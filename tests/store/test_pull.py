"""Removing a model: only the store's own files go, whatever shape models/<name> has."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.catalog import ModelDef
from bastion.errors import ModelConflictError, ModelLoadError
from bastion.settings import StoreSettings
from bastion.store.package import discard
from bastion.store.pull import pull, remove

URL_MODEL = ModelDef(
    name="m",
    url={"url": "https://example.org/m.gguf", "sha256": "ab" * 32},  # type: ignore[arg-type]
)


def operator_data(tmp_path: Path) -> Path:
    """A directory bastion must never delete, with one file in it."""
    data = tmp_path / "operator-data"
    data.mkdir()
    (data / "keep.gguf").write_bytes(b"GGUF")
    return data


@pytest.mark.parametrize("entry", ["m", ".pull-m"])
@pytest.mark.parametrize("kind", ["to a directory", "to a file", "dangling"])
def test_a_symlink_in_the_store_is_unlinked_never_followed(
    tmp_path: Path, entry: str, kind: str
) -> None:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    data = operator_data(tmp_path)
    target = {"to a directory": data, "to a file": data / "keep.gguf"}.get(kind, tmp_path / "no")
    (home / "models" / entry).symlink_to(target)
    assert remove(home, URL_MODEL) is True
    assert not (home / "models" / entry).is_symlink()
    assert (data / "keep.gguf").read_bytes() == b"GGUF"


def test_remove_deletes_pulled_and_partial_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for entry in ("m", ".pull-m"):
        (home / "models" / entry).mkdir(parents=True)
        (home / "models" / entry / "x.gguf").write_bytes(b"GGUF")
    assert remove(home, URL_MODEL) is True
    assert list((home / "models").iterdir()) == []
    assert remove(home, URL_MODEL) is False


def test_remove_refuses_a_local_model(tmp_path: Path) -> None:
    data = operator_data(tmp_path)
    model = ModelDef.model_validate(
        {"name": "mine", "local_path": str(data)}, context={"allowed_roots": [str(tmp_path)]}
    )
    with pytest.raises(ModelLoadError, match="never deletes"):
        remove(tmp_path / "home", model)
    assert (data / "keep.gguf").exists()


@pytest.mark.parametrize("inside", ["m", "m/sub", ".pull-m", ".pull-m/sub"])
def test_a_directory_a_catalog_entry_uses_is_never_deleted(tmp_path: Path, inside: str) -> None:
    """An entry hand-written into catalog.yaml (validation would refuse it) still protects its
    directory: nothing of the model's store is deleted."""
    home = tmp_path / "home"
    (home / "models" / "m").mkdir(parents=True)
    (home / "models" / "m" / "CHECKSUMS.sha256").write_text("x")
    used = home / "models" / inside
    used.mkdir(parents=True, exist_ok=True)
    (used / "keep.gguf").write_bytes(b"GGUF")
    (home / "catalog.yaml").write_text(f"models:\n  other:\n    local_path: {used}\n")
    with pytest.raises(ModelConflictError, match="will not delete"):
        remove(home, URL_MODEL)
    with pytest.raises(ModelConflictError, match="will not delete"):
        discard(home, "m")
    assert (used / "keep.gguf").exists()
    assert (home / "models" / "m" / "CHECKSUMS.sha256").exists()


def test_pull_refuses_a_local_path_inside_bastion_home(tmp_path: Path) -> None:
    """An entry validated without the home (or before this rule) is checked again at pull."""
    home = tmp_path / "home"
    (home / "models" / "other").mkdir(parents=True)
    (home / "models" / "other" / "w.gguf").write_bytes(b"GGUF")
    model = ModelDef.model_validate(
        {"name": "mine", "local_path": str(home / "models" / "other")},
        context={"allowed_roots": [str(tmp_path)]},
    )
    with pytest.raises(ModelLoadError, match="inside BASTION_HOME"):
        pull(home, model, StoreSettings(allowed_roots=[tmp_path]))
    assert not (home / "models" / "mine").exists()
    assert sorted(p.name for p in (home / "models" / "other").iterdir()) == ["w.gguf"]
