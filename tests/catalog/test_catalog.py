"""The catalog file: operator entries merge over built-ins, bad ones are skipped by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.catalog import BUILTIN_MODELS, SMOLLM2, load_catalog
from bastion.errors import InvalidParameterError, ModelConflictError, ModelNotFoundError


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


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("models: [unclosed\n", "line 2, column 1"),
        ("models:\n  mine:\n    ctx: 2048\n   url: x\n", "line 4, column 4"),
        ("models:\n\tmine: {}\n", "line 2, column 1"),
        ("models:\n  mine:\n    description: *S3cretValue\n", "line 3, column 18"),
    ],
)
def test_broken_yaml_keeps_the_builtins_and_says_where(
    tmp_path: Path, text: str, where: str
) -> None:
    write(tmp_path, text)
    catalog = load_catalog(tmp_path)
    assert "smollm2-135m-instruct" in catalog.entries
    assert f"catalog.yaml, {where}: not valid YAML" in catalog.warnings[0]
    assert "S3cretValue" not in catalog.warnings[0]  # PyYAML's text can quote the file


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


def _url(name: str, digest: str, url: str = "https://m.example/a.gguf") -> dict[str, object]:
    return {"name": name, "url": {"url": url, "sha256": digest}}


def _stored(home: Path, name: str) -> Path:
    """Files, manifest and signature a pull would leave, as plain markers."""
    directory = home / "models" / name
    directory.mkdir(parents=True)
    for file in ("a.gguf", "CHECKSUMS.sha256", "CHECKSUMS.sha256.minisig"):
        (directory / file).write_text(file)
    (home / "models" / f".pull-{name}").mkdir()
    return directory


def test_an_existing_entry_is_replaced_only_when_asked(tmp_path: Path) -> None:
    catalog = load_catalog(tmp_path)
    catalog.add(_url("m", "ab" * 32))
    with pytest.raises(ModelConflictError, match="already exists"):
        catalog.add({**_url("m", "ab" * 32), "ctx": 4096})
    assert catalog.get("m").ctx is None
    assert catalog.add({**_url("m", "ab" * 32), "ctx": 4096}, replace=True).ctx == 4096


@pytest.mark.parametrize(
    "change",
    [
        {"url": {"url": "https://m.example/a.gguf", "sha256": "cd" * 32}},  # other digest
        {"url": {"url": "https://evil.example/a.gguf", "sha256": "ab" * 32}},  # other URL
        {"url": {"url": "https://m.example/a.gguf", "sha256": "ab" * 32, "file": "b.gguf"}},
        {"url": None, "package": {"distribution": "other-dist", "file": "a.gguf"}},
    ],
)
def test_a_changed_source_discards_the_stored_identity(
    tmp_path: Path, change: dict[str, object]
) -> None:
    catalog = load_catalog(tmp_path)
    catalog.add(_url("m", "ab" * 32))
    directory = _stored(tmp_path, "m")
    catalog.add({k: v for k, v in {**_url("m", "ab" * 32), **change}.items() if v}, replace=True)
    assert not directory.exists()
    assert not (tmp_path / "models" / ".pull-m").exists()


def test_the_same_source_keeps_the_stored_files(tmp_path: Path) -> None:
    catalog = load_catalog(tmp_path)
    catalog.add(_url("m", "ab" * 32))
    directory = _stored(tmp_path, "m")
    catalog.add({**_url("m", "ab" * 32), "ctx": 4096, "description": "x"}, replace=True)
    assert (directory / "CHECKSUMS.sha256.minisig").is_file()


def test_a_builtin_is_repointed_only_when_asked_and_then_loses_its_files(tmp_path: Path) -> None:
    catalog = load_catalog(tmp_path)
    builtin = BUILTIN_MODELS[SMOLLM2]
    assert builtin.package is not None
    directory = _stored(tmp_path, SMOLLM2)
    unpinned = {"name": SMOLLM2, "package": {"distribution": "other", "file": "a.gguf"}}
    for attempt in (unpinned, _url(SMOLLM2, "ab" * 32)):
        with pytest.raises(ModelConflictError, match="built in"):
            catalog.add(attempt)
    assert catalog.get(SMOLLM2) == builtin
    assert directory.is_dir()
    # Same source, other settings: an ordinary override, files kept.
    catalog.add({**builtin.model_dump(exclude_defaults=True), "ctx": 1024})
    assert directory.is_dir()
    catalog.add(unpinned, replace=True)
    assert not directory.exists()


def test_the_catalog_refuses_a_local_path_inside_its_home(tmp_path: Path) -> None:
    """store.allowed_roots may cover BASTION_HOME; the catalog still keeps local models out."""
    home = tmp_path / "home"
    (home / "models" / "pulled").mkdir(parents=True)
    (home / "models" / "pulled" / "w.gguf").write_bytes(b"GGUF")
    catalog = load_catalog(home, [tmp_path])
    with pytest.raises(InvalidParameterError, match="inside BASTION_HOME"):
        catalog.add({"name": "mine", "local_path": str(home / "models" / "pulled")})
    assert not (home / "catalog.yaml").exists()
    write(home, f"models:\n  mine:\n    local_path: {home / 'models' / 'pulled'}\n")
    reloaded = load_catalog(home, [tmp_path])
    assert "mine" not in reloaded.entries
    assert any("inside BASTION_HOME" in w for w in reloaded.warnings)
