"""The real app in process (httpx.ASGITransport) over the shared fake engine and a tiny stored
model.

The model is a URL-source entry whose files are written straight into the store, signed with
the server key as a pull would, so the registry verifies it and "loads" it into a
``tests.fakes.FakeEngine`` without llama.cpp.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi import FastAPI

from bastion.api.app import create_app
from bastion.integrity.manifest import write_manifest
from bastion.integrity.trust import local_key, sign_directory
from bastion.settings import Settings
from tests.fakes import FakeBehaviour, FakeEngine, fake_factory

MODEL = "tiny"
WEIGHTS = b"GGUF stand-in weights"


def url_entry(
    name: str, data: bytes, url: str = "https://models.example/tiny.gguf"
) -> dict[str, Any]:
    return {"name": name, "url": {"url": url, "sha256": hashlib.sha256(data).hexdigest()}}


def store_model(home: Path, name: str = MODEL, data: bytes = WEIGHTS) -> Path:
    """Put ``name`` in the catalog and its file, manifest and signature in the store."""
    entry = url_entry(name, data)
    catalog = home / "catalog.yaml"
    models = yaml.safe_load(catalog.read_text()) if catalog.exists() else {"models": {}}
    models["models"][name] = {k: v for k, v in entry.items() if k != "name"}
    home.mkdir(parents=True, exist_ok=True)
    catalog.write_text(yaml.safe_dump(models))
    directory = home / "models" / name
    directory.mkdir(parents=True)
    (directory / "tiny.gguf").write_bytes(data)
    write_manifest(directory, ["tiny.gguf"])
    sign_directory(directory, local_key(home))
    return directory


def fake_app(
    settings: Settings, home: Path, behaviour: FakeBehaviour | None = None
) -> tuple[FastAPI, list[FakeEngine]]:
    """The app over fake engines, and the list of the engines it builds (in build order)."""
    engines, factory = fake_factory(behaviour)
    return create_app(settings, home, factory), engines


@asynccontextmanager
async def serving(
    home: Path,
    *,
    loopback_bypass: bool = True,
    admin_certs: list[str] | None = None,
    behaviour: FakeBehaviour | None = None,
) -> AsyncIterator[tuple[FastAPI, list[FakeEngine]]]:
    """The app with its lifespan run and the stored model loaded, with its fake engines."""
    if not (home / "models" / MODEL).exists():
        store_model(home)
    settings = Settings(
        server={"default_model": MODEL},
        auth={"loopback_bypass": loopback_bypass, "admin_certs": admin_certs or []},
    )
    app, engines = fake_app(settings, home, behaviour)
    async with app.router.lifespan_context(app):
        await app.state.registry.wait_loaded()
        assert app.state.registry.ready, app.state.registry.states(detail=True)
        yield app, engines


@asynccontextmanager
async def running_app(
    home: Path,
    *,
    loopback_bypass: bool = True,
    admin_certs: list[str] | None = None,
    behaviour: FakeBehaviour | None = None,
) -> AsyncIterator[FastAPI]:
    """``serving`` for tests that need only the app."""
    async with serving(
        home, loopback_bypass=loopback_bypass, admin_certs=admin_certs, behaviour=behaviour
    ) as (app, _):
        yield app


def client(app: FastAPI, address: str, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=headers)
