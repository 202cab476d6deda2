"""The catalog file: operator entries merge over built-ins, bad ones are skipped by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.catalog import load_catalog
from bastion.errors import InvalidParameterError, ModelNotFoundError


def write(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.yaml").write_text(text)


def test_without_a_file_the_catalog_is_the_builtins(tmp_path: Path) -> None:
    catalog = load_catalog(tmp_path)
    assert sorted(m.name for m in catalog) == ["gemma3-270m", "smollm2-135m-instruct"]
    assert catalog.warnings == []


def test_invalid_entries_are_skipped_with_a_warning_naming_them(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
models:
  good:
    url: {{url: "https://example.org/good.gguf", sha256: "{}"}}
  bad-source:
    description: no source at all
  Bad_Name:
    url: {{url: "https://example.org/x.gguf", sha256: "{}"}}
  not-a-mapping: 42
""".format("ab" * 32, "ab" * 32),
    )
    catalog = load_catalog(tmp_path)
    assert "good" in catalog.entries
    assert "smollm2-135m-instruct" in catalog.entries
    joined = "\n".join(catalog.warnings)
    for name in ("bad-source", "Bad_Name", "not-a-mapping"):
        assert f"'{name}' skipped" in joined
    assert "exactly one source" in joined


def test_broken_yaml_keeps_the_builtins(tmp_path: Path) -> None:
    write(tmp_path, "models: [unclosed\n")
    catalog = load_catalog(tmp_path)
    assert "smollm2-135m-instruct" in catalog.entries
    assert "not valid YAML" in catalog.warnings[0]


def test_operator_override_merges_over_a_builtin(tmp_path: Path) -> None:
    write(tmp_path, "models:\n  smollm2-135m-instruct:\n    ctx: 2048\n")
    model = load_catalog(tmp_path).get("smollm2-135m-instruct")
    assert model.ctx == 2048
    assert model.package is not None  # the built-in source is kept


def test_a_model_can_override_the_repack_policy(tmp_path: Path) -> None:
    write(tmp_path, 'models:\n  smollm2-135m-instruct:\n    repack: "off"\n')
    assert load_catalog(tmp_path).get("smollm2-135m-instruct").repack == "off"
    assert load_catalog(tmp_path).get("gemma3-270m").repack is None  # engine.repack decides
    write(tmp_path, "models:\n  smollm2-135m-instruct:\n    repack: sometimes\n")
    catalog = load_catalog(tmp_path)
    assert "'smollm2-135m-instruct' skipped" in "\n".join(catalog.warnings)
    assert catalog.get("smollm2-135m-instruct").repack is None  # the built-in stays


def test_add_validates_before_writing_and_writes_atomically(tmp_path: Path) -> None:
    catalog = load_catalog(tmp_path)
    with pytest.raises(InvalidParameterError, match="exactly one source"):
        catalog.add({"name": "broken"})
    assert not (tmp_path / "catalog.yaml").exists()
    catalog.add({"name": "mine", "url": {"url": "https://example.org/m.gguf", "sha256": "cd" * 32}})
    assert load_catalog(tmp_path).get("mine").url is not None
    assert [p.name for p in tmp_path.iterdir()] == ["catalog.yaml"]  # no temp files left


def test_unknown_model_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        load_catalog(tmp_path).get("nope")
