"""ModelDef: every bad entry is refused with a message that says what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.catalog import BUILTIN_MODELS, ModelDef

PKG = {"distribution": "some-dist", "file": "model.gguf"}
URL = {"url": "https://example.org/m.gguf", "sha256": "ab" * 32}


def make(data: dict[str, Any], roots: list[Path] | None = None) -> ModelDef:
    return ModelDef.model_validate(data, context={"allowed_roots": [str(r) for r in roots or []]})


def refusal(data: dict[str, Any], roots: list[Path] | None = None) -> str:
    with pytest.raises(ValidationError) as info:
        make(data, roots)
    return str(info.value)


def test_builtins_are_valid_and_come_from_packages() -> None:
    assert set(BUILTIN_MODELS) == {"smollm2-135m-instruct", "gemma3-270m"}
    for model in BUILTIN_MODELS.values():
        assert model.source_kind == "package"
        assert model.package is not None
        assert model.package.sha256 is not None


@pytest.mark.parametrize("name", ["UPPER", "has space", "x" * 65, "", "slash/name", "ünï"])
def test_bad_names_are_refused(name: str) -> None:
    assert "name" in refusal({"name": name, "package": PKG})


def test_exactly_one_source() -> None:
    assert "got none" in refusal({"name": "m"})
    assert "got package, url" in refusal({"name": "m", "package": PKG, "url": URL})


def test_url_needs_a_sha256_and_https_or_http() -> None:
    assert "sha256" in refusal({"name": "m", "url": {"url": "https://x.org/m.gguf"}})
    assert "url" in refusal({"name": "m", "url": {**URL, "url": "file:///etc/passwd"}})
    assert make({"name": "m", "url": URL}).weights_name == "m.gguf"


def test_hf_needs_files_or_pattern() -> None:
    assert "exactly one of 'files' and 'pattern'" in refusal({"name": "m", "hf": {"repo": "a/b"}})
    model = make({"name": "m", "hf": {"repo": "a/b", "files": ["x.gguf"]}, "file": "x.gguf"})
    assert model.hf is not None
    assert model.hf.revision == "main"


def test_unknown_fields_are_typos_not_silently_ignored() -> None:
    assert "ctxx" in refusal({"name": "m", "package": PKG, "ctxx": 4096})


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("relative/dir", "absolute"),
        ("/srv/models/../etc", "'.' or '..'"),
        ("/srv/models/./x", "'.' or '..'"),
        ("/srv/models/with space", "letters, digits"),
        ("/srv/models/$(rm)", "letters, digits"),
    ],
)
def test_local_path_shape(path: str, message: str) -> None:
    assert message in refusal({"name": "m", "local_path": path}, [Path("/srv")])


def test_local_path_needs_an_allowed_root(tmp_path: Path) -> None:
    assert "store.allowed_roots" in refusal({"name": "m", "local_path": str(tmp_path)})
    other = tmp_path / "other"
    other.mkdir()
    assert "outside the allowed roots" in refusal(
        {"name": "m", "local_path": str(other)}, [tmp_path / "models"]
    )


def test_symlink_escaping_the_allowed_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sneaky").symlink_to(outside)
    assert "outside the allowed roots" in refusal(
        {"name": "m", "local_path": str(root / "sneaky")}, [root]
    )


def test_local_weights_must_exist(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "mine").mkdir(parents=True)
    assert "does not exist" in refusal({"name": "m", "local_path": str(root / "gone")}, [root])
    assert "file w.gguf is missing" in refusal(
        {"name": "m", "local_path": str(root / "mine"), "file": "w.gguf"}, [root]
    )
    assert "name the weights" in refusal({"name": "m", "local_path": str(root / "mine")}, [root])
    (root / "mine" / "only.gguf").write_bytes(b"GGUF")
    assert make({"name": "m", "local_path": str(root / "mine")}, [root]).local_path is not None


def test_chat_template_must_live_inside_local_path(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "w.gguf").write_bytes(b"GGUF")
    ok = make(
        {
            "name": "m",
            "local_path": str(root / "mine"),
            "file": "w.gguf",
            "chat_template": "template.jinja",
        },
        [root],
    )
    assert ok.chat_template == Path("template.jinja")
    assert "must live inside local_path" in refusal(
        {"name": "m", "local_path": str(root / "mine"), "chat_template": "../evil.jinja"}, [root]
    )
    assert "must live inside local_path" in refusal(
        {"name": "m", "local_path": str(root / "mine"), "chat_template": "/etc/passwd"}, [root]
    )
