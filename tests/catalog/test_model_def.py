"""ModelDef: every bad entry is refused with a message that says what to fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.catalog import BUILTIN_MODELS, ModelDef
from bastion.catalog.model_def import check_local_file

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


@pytest.mark.parametrize(
    "name",
    [
        *("UPPER", "has space", "x" * 65, "", "slash/name", "ünï"),
        # each of these became a path under models/ (`..` is BASTION_HOME itself)
        *("..", ".", "../x", "/abs", ".pull-m", "-m", "m.", "nul", "m\u043e"),
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    assert "invalid model name" in refusal({"name": name, "package": PKG})


def test_names_follow_the_one_path_name_rule() -> None:
    for name in ("m", "smollm2-135m-instruct", "qwen2.5-0.5b", "a_b", "x" * 64):
        assert make({"name": name, "package": PKG}).name == name


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
    assert "holds no .gguf file" in refusal({"name": "m", "local_path": str(root / "mine")}, [root])
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


# Local files that are symlinks: one rule (check_local_file) at add, pull and every load.


def local_tree(tmp_path: Path) -> tuple[Path, Path]:
    """An allowed root holding mine/w.gguf, and a directory outside it holding w.gguf."""
    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "w.gguf").write_bytes(b"GGUF mine")
    outside.mkdir()
    (outside / "w.gguf").write_bytes(b"GGUF elsewhere")
    (outside / "t.jinja").write_text("{{ messages }}")
    return root, outside


@pytest.mark.parametrize("file", ["w.gguf", None])
def test_a_weights_symlink_out_of_the_roots_is_refused(tmp_path: Path, file: str | None) -> None:
    root, outside = local_tree(tmp_path)
    (root / "mine" / "w.gguf").unlink()
    (root / "mine" / "w.gguf").symlink_to(outside / "w.gguf")
    entry = {"name": "m", "local_path": str(root / "mine"), **({"file": file} if file else {})}
    assert "is a symlink" in refusal(entry, [root])


def test_a_weights_symlink_inside_the_roots_is_refused_too(tmp_path: Path) -> None:
    """Serving refuses any symlinked file (the manifest vouches for regular files), so add
    refuses it as well rather than fail later."""
    root, _ = local_tree(tmp_path)
    (root / "elsewhere").mkdir()
    (root / "mine" / "w.gguf").rename(root / "elsewhere" / "w.gguf")
    (root / "mine" / "w.gguf").symlink_to(root / "elsewhere" / "w.gguf")
    assert "is a symlink" in refusal({"name": "m", "local_path": str(root / "mine")}, [root])


def test_a_dangling_weights_symlink_is_refused(tmp_path: Path) -> None:
    root, _ = local_tree(tmp_path)
    (root / "mine" / "w.gguf").unlink()
    (root / "mine" / "w.gguf").symlink_to(tmp_path / "gone.gguf")
    assert "is a symlink" in refusal(
        {"name": "m", "local_path": str(root / "mine"), "file": "w.gguf"}, [root]
    )


def test_weights_that_are_not_a_regular_file_are_refused(tmp_path: Path) -> None:
    root, _ = local_tree(tmp_path)
    (root / "mine" / "w.gguf").unlink()
    os.mkfifo(root / "mine" / "w.gguf")
    assert "not a regular file" in refusal(
        {"name": "m", "local_path": str(root / "mine"), "file": "w.gguf"}, [root]
    )


def test_a_symlinked_directory_component_out_of_the_roots_is_refused(tmp_path: Path) -> None:
    root, outside = local_tree(tmp_path)
    (outside / "mine").mkdir()
    (outside / "mine" / "w.gguf").write_bytes(b"GGUF")
    (root / "link").symlink_to(outside)
    assert "outside the allowed roots" in refusal(
        {"name": "m", "local_path": str(root / "link" / "mine")}, [root]
    )


def test_a_chat_template_symlink_out_of_the_roots_is_refused(tmp_path: Path) -> None:
    root, outside = local_tree(tmp_path)
    (root / "mine" / "t.jinja").symlink_to(outside / "t.jinja")
    entry = {"name": "m", "local_path": str(root / "mine"), "chat_template": "t.jinja"}
    assert "must live inside local_path" in refusal(entry, [root])
    (root / "mine" / "t.jinja").unlink()
    (root / "mine" / "real.jinja").write_text("{{ messages }}")
    (root / "mine" / "t.jinja").symlink_to(root / "mine" / "real.jinja")
    assert "is a symlink" in refusal(entry, [root])


def test_symlinked_directories_that_stay_inside_the_roots_are_allowed(tmp_path: Path) -> None:
    root, _ = local_tree(tmp_path)
    (root / "alias").symlink_to(root / "mine")
    assert make({"name": "m", "local_path": str(root / "alias")}, [root]).local_path is not None
    linked_root = tmp_path / "root-link"
    linked_root.symlink_to(root)
    entry = {"name": "m", "local_path": str(linked_root / "mine"), "file": "w.gguf"}
    assert make(entry, [linked_root]).file == "w.gguf"


def test_check_local_file_rechecks_the_roots_when_given_them(tmp_path: Path) -> None:
    root, _ = local_tree(tmp_path)
    assert check_local_file(root / "mine", "w.gguf", [root]) == (root / "mine" / "w.gguf").resolve()
    with pytest.raises(ValueError, match="outside the allowed roots"):
        check_local_file(root / "mine", "w.gguf", [tmp_path / "elsewhere"])


# BASTION_HOME is the store's: it deletes and replaces models/<name>, so a local model (never
# bastion's to delete) must not live anywhere inside it, even when a root covers it.


@pytest.mark.parametrize("where", ["models/other", "models/m", "models", "tls", "."])
def test_local_path_inside_bastion_home_is_refused(tmp_path: Path, where: str) -> None:
    home = tmp_path / "home"
    directory = (home / where).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "w.gguf").write_bytes(b"GGUF")
    data = {"name": "m", "local_path": str(directory)}
    with pytest.raises(ValidationError, match="inside BASTION_HOME"):
        ModelDef.model_validate(data, context={"allowed_roots": [str(tmp_path)], "home": str(home)})


def test_an_alias_resolving_into_bastion_home_is_refused(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "roots"
    (home / "models" / "other").mkdir(parents=True)
    (home / "models" / "other" / "w.gguf").write_bytes(b"GGUF")
    root.mkdir()
    (root / "alias").symlink_to(home / "models" / "other")
    data = {"name": "m", "local_path": str(root / "alias")}
    with pytest.raises(ValidationError, match="inside BASTION_HOME"):
        ModelDef.model_validate(data, context={"allowed_roots": [str(tmp_path)], "home": str(home)})


def test_check_local_file_refuses_bastion_home_when_given_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "models" / "x").mkdir(parents=True)
    (home / "models" / "x" / "w.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="inside BASTION_HOME"):
        check_local_file(home / "models" / "x", "w.gguf", [tmp_path], home)
    beside = tmp_path / "beside"
    beside.mkdir()
    (beside / "w.gguf").write_bytes(b"GGUF")
    assert check_local_file(beside, "w.gguf", [tmp_path], home) == (beside / "w.gguf").resolve()


@pytest.mark.parametrize(
    ("extra", "completion_only"),
    [
        ({}, False),  # undeclared: the weights decide at load
        ({"tags": ["base"]}, True),
        ({"tags": ["small", "base"], "use_cases": ["chat"]}, True),  # the tag wins
        ({"use_cases": ["completion"]}, True),
        ({"use_cases": ["completion", "code"]}, True),
        ({"use_cases": ["completion", "chat"]}, False),
        ({"use_cases": ["code"]}, False),
        ({"tags": ["basement"]}, False),
    ],
)
def test_completion_only_is_what_the_entry_declares(
    extra: dict[str, Any], completion_only: bool
) -> None:
    assert make({"name": "m", "url": URL, **extra}).completion_only is completion_only


def test_a_catalog_chat_template_makes_a_base_model_chat(tmp_path: Path) -> None:
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    (tmp_path / "chat.jinja").write_text("{{ messages[-1]['content'] }}")
    entry = {"name": "m", "local_path": str(tmp_path), "tags": ["base"]}
    assert make(entry, [tmp_path]).completion_only
    assert not make({**entry, "chat_template": "chat.jinja"}, [tmp_path]).completion_only


def test_builtins_say_which_is_chat_and_which_completion_only() -> None:
    assert not BUILTIN_MODELS["smollm2-135m-instruct"].completion_only
    assert BUILTIN_MODELS["gemma3-270m"].completion_only
