"""API key scopes: inference by default, admin on request, old key files read as inference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.security.api_keys import ADMIN, INFERENCE, KeyStore, KeyStoreError, parse_scopes


def test_a_new_key_is_inference_only_by_default(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    token = store.create("chat")
    key = store.identify(token.encode())
    assert key is not None
    assert key.scopes == {INFERENCE}


def test_scopes_are_stored_with_the_hash_and_survive_revocation(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    token = store.create("ops", frozenset({ADMIN}))
    store.create("other")
    stored = json.loads((tmp_path / "keys" / "api-keys.json").read_text())["keys"]
    assert stored[0]["scopes"] == [ADMIN]
    assert token not in json.dumps(stored)
    store.revoke("ops")
    assert KeyStore(tmp_path).all()[0].scopes == {ADMIN}
    assert store.identify(token.encode()) is None


@pytest.mark.parametrize(
    ("record", "scopes"),
    [
        ({}, {INFERENCE}),  # written before scopes existed
        ({"scopes": ["admin"]}, {ADMIN}),
        ({"scopes": ["admin", "root", "superuser"]}, {ADMIN}),  # unknown names only narrow
        ({"scopes": "admin"}, set()),  # not a list: no scope, never a guess
        ({"scopes": []}, set()),
    ],
)
def test_key_files_are_read_fail_closed(
    tmp_path: Path, record: dict[str, object], scopes: set[str]
) -> None:
    path = tmp_path / "keys" / "api-keys.json"
    path.parent.mkdir(parents=True)
    key = {"name": "k", "sha256": "00" * 32, "created": "2025-01-01T00:00:00+00:00", **record}
    path.write_text(json.dumps({"keys": [{**key, "revoked": False}]}))
    assert KeyStore(tmp_path).all()[0].scopes == scopes


@pytest.mark.parametrize(
    ("values", "scopes"),
    [
        (["admin"], {ADMIN}),
        (["inference,admin"], {INFERENCE, ADMIN}),
        (["inference", "admin"], {INFERENCE, ADMIN}),
        ([" Admin , "], {ADMIN}),
    ],
)
def test_scopes_parse_from_repeated_or_comma_lists(values: list[str], scopes: set[str]) -> None:
    assert parse_scopes(values) == scopes


@pytest.mark.parametrize("values", [["root"], ["admin,everything"], [""], [","], []])
def test_unknown_or_empty_scopes_are_refused(values: list[str]) -> None:
    with pytest.raises(KeyStoreError):
        parse_scopes(values)


def test_create_refuses_unknown_scopes(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError):
        KeyStore(tmp_path).create("k", frozenset({"root"}))
    with pytest.raises(KeyStoreError):
        KeyStore(tmp_path).create("k", frozenset())
    assert KeyStore(tmp_path).all() == []
