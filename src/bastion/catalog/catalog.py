"""The catalog: built-in entries plus the operator's ``$BASTION_HOME/catalog.yaml``.

An operator entry with a built-in's name merges over it (``ctx: 2048`` is enough to change one
field). An invalid operator entry is skipped with a warning naming it; it never breaks the rest
of the catalog. Writes validate the whole entry first and replace the file atomically.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bastion.catalog.model_def import BUILTIN_MODELS, ModelDef
from bastion.errors import InvalidParameterError, ModelConflictError, ModelNotFoundError
from bastion.settings import yaml_error_where

log = logging.getLogger(__name__)
CATALOG_FILE = "catalog.yaml"
SOURCE_FIELDS = frozenset({"package", "hf", "url", "local_path", "file"})


def source_of(model: ModelDef) -> dict[str, Any]:
    """What decides which bytes a model's name stands for: its source and weights file."""
    return model.model_dump(mode="json", include=set(SOURCE_FIELDS))


def describe(exc: ValidationError) -> str:
    """'field: problem; field: problem' for a person fixing an entry."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "entry"
        parts.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


@dataclass
class Catalog:
    home: Path
    allowed_roots: list[Path] = field(default_factory=list)
    entries: dict[str, ModelDef] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[ModelDef]:
        return iter(self.entries.values())

    def get(self, name: str) -> ModelDef:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries))
            raise ModelNotFoundError(
                f"The model '{name}' is not in the catalog (known: {known})", param="model"
            ) from None

    def is_builtin(self, name: str) -> bool:
        return name in BUILTIN_MODELS

    def validate(self, data: dict[str, Any]) -> ModelDef:
        """Validate a whole entry; the error lists every field to fix."""
        try:
            return ModelDef.model_validate(
                data,
                context={
                    "allowed_roots": [str(r) for r in self.allowed_roots],
                    "home": str(self.home),
                },
            )
        except ValidationError as exc:
            raise InvalidParameterError(describe(exc), param="model") from None

    def add(self, data: dict[str, Any], *, replace: bool = False) -> ModelDef:
        """Validate, then persist atomically; nothing is written for an invalid entry.

        An existing operator entry, or a built-in pointed at another source, is replaced
        only with ``replace``. A changed source discards what the store holds for the name."""
        model = self.validate(data)
        old = self.entries.get(model.name)
        changed = old is not None and source_of(old) != source_of(model)
        if old is not None and not replace:
            if not self.is_builtin(model.name):
                raise ModelConflictError(
                    f"a model named '{model.name}' already exists; replace it with force",
                    param="name",
                )
            if changed:
                raise ModelConflictError(
                    f"'{model.name}' is built in; pointing it at another source needs force",
                    param="name",
                )
        if changed:
            # Before the entry is written: a new source must never inherit the old digest
            # or signature, even if this write fails half way.
            from bastion.store.package import discard  # noqa: PLC0415 - store imports catalog

            discard(self.home, model.name)
        raw = _read_file(self.path)
        raw[model.name] = model.model_dump(mode="json", exclude_defaults=True)
        _write_atomic(self.path, raw)
        self.entries[model.name] = model
        return model

    def remove(self, name: str) -> None:
        raw = _read_file(self.path)
        if name in raw:
            del raw[name]
            _write_atomic(self.path, raw)
        if name in BUILTIN_MODELS:
            self.entries[name] = BUILTIN_MODELS[name]
        else:
            self.entries.pop(name, None)

    @property
    def path(self) -> Path:
        return self.home / CATALOG_FILE


def load_catalog(home: Path, allowed_roots: list[Path] | None = None) -> Catalog:
    catalog = Catalog(home, list(allowed_roots or []), dict(BUILTIN_MODELS))
    try:
        raw = _read_file(catalog.path)
    except CatalogFileError as exc:
        catalog.warnings.append(str(exc))
        log.warning("%s", exc)
        return catalog
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            catalog.warnings.append(f"catalog entry '{name}' skipped: expected a mapping")
            continue
        base = (
            BUILTIN_MODELS[name].model_dump(exclude_defaults=True)
            if (name in BUILTIN_MODELS)
            else {}
        )
        try:
            catalog.entries[str(name)] = catalog.validate({**base, **entry, "name": name})
        except InvalidParameterError as exc:
            catalog.warnings.append(f"catalog entry '{name}' skipped: {exc.message}")
    for warning in catalog.warnings:
        log.warning("%s", warning)
    return catalog


def local_paths(home: Path) -> list[Path]:
    """Every absolute ``local_path`` the catalog file names, in valid entries or not: the
    store must never delete one, even one that validation would now refuse."""
    try:
        raw = _read_file(home / CATALOG_FILE)
    except CatalogFileError:
        return []
    found = (e.get("local_path") for e in raw.values() if isinstance(e, dict))
    return [Path(p) for p in found if isinstance(p, str) and Path(p).is_absolute()]


class CatalogFileError(Exception):
    """The catalog file as a whole cannot be read."""


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CatalogFileError(f"{path}{yaml_error_where(exc)}; ignored") from None
    models = data.get("models", {}) if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise CatalogFileError(f"{path}: expected 'models:' with one mapping per model; ignored")
    return models


def _write_atomic(path: Path, models: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".catalog-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump({"models": models}, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
