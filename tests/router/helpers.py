"""A registry over stored stand-in models and fake engines, for the router's unit tests."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bastion.catalog import load_catalog
from bastion.engine.base import GenerationParams, ModelSpec
from bastion.integrity.manifest import write_manifest
from bastion.integrity.trust import local_key, sign_directory
from bastion.router import ModelRegistry
from bastion.router.webhook import Webhook
from bastion.settings import RouterSettings
from tests.fakes import FakeBehaviour, FakeEngine

T = TypeVar("T")


def store(home: Path, name: str, data: bytes | None = None) -> None:
    """Put ``name`` in the catalog (a URL entry) and its signed files in the store, as a
    pull would."""
    data = data or f"GGUF stand-in weights of {name}".encode()
    catalog = home / "catalog.yaml"
    home.mkdir(parents=True, exist_ok=True)
    models = yaml.safe_load(catalog.read_text()) if catalog.exists() else {"models": {}}
    models["models"][name] = {
        "url": {
            "url": f"https://models.example/{name}.gguf",
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    }
    catalog.write_text(yaml.safe_dump(models))
    directory = home / "models" / name
    directory.mkdir(parents=True)
    (directory / f"{name}.gguf").write_bytes(data)
    write_manifest(directory, [f"{name}.gguf"])
    sign_directory(directory, local_key(home))


class Fleet:
    """The engines a registry built, with a behaviour per model."""

    def __init__(self, behaviours: dict[str, FakeBehaviour] | None = None) -> None:
        self.behaviours = behaviours or {}
        self.built: list[FakeEngine] = []

    def __call__(self, spec: ModelSpec) -> FakeEngine:
        engine = FakeEngine(spec, self.behaviours.get(spec.name, FakeBehaviour()))
        self.built.append(engine)
        return engine

    def of(self, name: str) -> list[FakeEngine]:
        return [e for e in self.built if e.spec.name == name]


@asynccontextmanager
async def registry(
    home: Path,
    names: list[str],
    fleet: Fleet,
    *,
    webhook: Webhook | None = None,
    **router: Any,
) -> AsyncIterator[ModelRegistry]:
    """A started registry over ``names`` (stored under ``home``), the first the default
    model; ``router`` are ``RouterSettings`` fields (preload defaults to [] here)."""
    for name in names:
        if not (home / "models" / name).exists():
            store(home, name)
    router.setdefault("preload", [])
    reg = ModelRegistry(
        home,
        load_catalog(home),
        names[0],
        fleet,
        RouterSettings(**router),
        webhook=webhook,
    )
    reg.start()
    try:
        await reg.wait_loaded()
        yield reg
    finally:
        await reg.close()


async def ask(reg: ModelRegistry, name: str, words: int | None = None) -> str:
    """One request for ``name``, as a route makes it: acquire, generate, release."""
    served = await reg.acquire(name)
    try:
        chunks = [c async for c in served.generate(GenerationParams(prompt="hi", max_tokens=words))]
    finally:
        served.release()
    return "".join(c.text for c in chunks)


async def until(check: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for ``check()`` to hold (a deadline against hangs, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await scenario()

    return asyncio.run(main())
