"""What a route holds for one request: a loaded engine behind its admission queue."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from bastion.engine import Chunk, Engine, GenerationParams, ModelInfo
from bastion.integrity.trust import system_fingerprint
from bastion.router.admission import Admission
from bastion.store.package import LocalModel


class ServedModel:
    """One request's hold on a loaded model. From ``ModelRegistry.acquire`` until
    ``release()`` (the route calls it when it returns; streaming has begun by then, and the
    admission queue holds the model from there) the router does not unload the model."""

    def __init__(
        self,
        engine: Engine,
        admission: Admission,
        local: LocalModel,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.admission = admission
        self.local = local
        self._release = release

    @property
    def fingerprint(self) -> str:
        """Which verified weights answered: the manifest's root digest and its signer."""
        return system_fingerprint(self.local.manifest_digest, self.local.signer)

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    def generate(self, params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        return self.admission.run(self.engine.generate(params))

    def release(self) -> None:
        """Let the router unload the model again once its queue is empty (idempotent)."""
        release, self._release = self._release, None
        if release is not None:
            release()
