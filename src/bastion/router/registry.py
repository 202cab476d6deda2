"""The model registry: which models are served, their state, and load on start.

Loading happens in the background so ``/health`` answers at once; ``/ready`` reports when
every configured model is loaded and verified.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bastion.catalog import ModelDef
from bastion.engine import Chunk, Engine, GenerationParams, ModelInfo
from bastion.errors import BastionError, ModelLoadError, ModelNotFoundError, ServiceUnavailableError
from bastion.router.admission import Admission
from bastion.settings import EngineSettings
from bastion.store.package import LocalModel, verify_local
from bastion.store.pull import prepare

log = logging.getLogger(__name__)


class ServedModel:
    """An engine behind its admission queue: what routes talk to."""

    def __init__(self, engine: Engine, admission: Admission, local: LocalModel) -> None:
        self.engine = engine
        self.admission = admission
        self.local = local

    @property
    def fingerprint(self) -> str:
        """Which verified weights answered: the manifest's root digest and its signer."""
        return f"sha256:{self.local.manifest_digest}/key:{self.local.signer or 'unsigned'}"

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    def generate(self, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        return self.admission.run(self.engine.generate(params))


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


EngineFactory = Callable[[LocalModel], Engine]
"""Builds an (unstarted) engine for a verified model."""

StateListener = Callable[[str, str, str], None]
"""Hears ``(model, engine kind, state)`` on every state change of a model."""


@dataclass(eq=False)
class _Entry:
    model: ModelDef
    state: ModelState = ModelState.LOADING
    engine: Engine | None = None
    served: ServedModel | None = None
    error: str | None = None
    load_seconds: float | None = None
    verify_seconds: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class ModelRegistry:
    def __init__(
        self,
        home: Path,
        default_model: str,
        factory: EngineFactory,
        settings: EngineSettings,
        *,
        require_signature: bool = True,
        on_state: StateListener | None = None,
    ) -> None:
        self._home = home
        self._default = default_model
        self._factory = factory
        self._settings = settings
        self._require_signature = require_signature
        self._entries: dict[str, _Entry] = {}
        self._on_state = on_state

    def _set_state(self, entry: _Entry, state: ModelState, error: str | None = None) -> None:
        entry.state, entry.error = state, error
        if self._on_state is not None:
            self._on_state(entry.model.name, entry.model.engine, state.value)

    @property
    def default_model(self) -> str:
        return self._default

    def add(self, model: ModelDef) -> None:
        """Register ``model`` and start importing, verifying and loading it in the background."""
        entry = _Entry(model)
        self._entries[model.name] = entry
        self._set_state(entry, ModelState.LOADING)
        entry.task = asyncio.create_task(self._load(entry), name=f"load-{model.name}")

    async def _load(self, entry: _Entry) -> None:
        started = time.perf_counter()
        name = entry.model.name
        try:
            await asyncio.to_thread(prepare, self._home, entry.model)
            verify_started = time.perf_counter()
            local = await asyncio.to_thread(
                functools.partial(verify_local, require_signature=self._require_signature),
                self._home,
                entry.model,
            )
            entry.verify_seconds = time.perf_counter() - verify_started
            engine = self._factory(local)
            await engine.start()
        except BastionError as exc:
            self._set_state(entry, ModelState.FAILED, exc.message)
            log.error("model %s is not served: %s", name, exc.message)  # noqa: TRY400
            return
        except Exception:
            self._set_state(entry, ModelState.FAILED, "failed to load")
            log.exception("model %s failed to load", name)
            return
        admission = Admission(lambda: engine.running, self._settings.max_queue)
        entry.engine, entry.served = engine, ServedModel(engine, admission, local)
        self._set_state(entry, ModelState.READY)
        entry.load_seconds = time.perf_counter() - started
        log.info("model %s ready (sha256 %s) in %.2fs", name, local.sha256, entry.load_seconds)

    async def wait_loaded(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def resolve(self, name: str | None) -> ServedModel:
        """The model serving ``name`` (the default model when None)."""
        entry = self._entries.get(name or self._default)
        if entry is None:
            raise ModelNotFoundError(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
            )
        if entry.state is ModelState.LOADING:
            raise ServiceUnavailableError(f"The model '{entry.model.name}' is still loading.")
        if entry.served is None or entry.state is not ModelState.READY:
            # The reason (paths, digests) is for operators, not for callers: point to where
            # they find it.
            raise ModelLoadError(
                f"The model '{entry.model.name}' is not available ({entry.state.value}). "
                "Operators: the reason is in the server log and at GET /api/status."
            )
        return entry.served

    def served(self) -> list[ServedModel]:
        return [
            e.served
            for e in self._entries.values()
            if e.served is not None and e.state is ModelState.READY
        ]

    def states(self, *, detail: bool = False) -> dict[str, dict[str, object]]:
        """Per model: state and load time, running and waiting; with ``detail`` (operators
        only) also why a model failed, which may name files on the server."""
        out: dict[str, dict[str, object]] = {}
        for name, entry in self._entries.items():
            state: dict[str, object] = {
                "state": entry.state.value,
                "load_seconds": entry.load_seconds,
                "verify_seconds": entry.verify_seconds,
            }
            if detail:
                state["error"] = entry.error
            if entry.served is not None:
                state["running"] = entry.served.engine.running
                state["waiting"] = entry.served.admission.waiting
            out[name] = state
        return out

    @property
    def ready(self) -> bool:
        return bool(self._entries) and all(
            e.state is ModelState.READY for e in self._entries.values()
        )

    async def close(self) -> None:
        for entry in self._entries.values():
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
        await self.wait_loaded()
        for entry in self._entries.values():
            if entry.engine is not None:
                await entry.engine.close()
            entry.engine, entry.served = None, None
            self._set_state(entry, ModelState.STOPPED)
