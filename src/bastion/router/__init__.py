"""Model router: every catalog model behind one registry, loaded on demand, swapped, unloaded
when idle. A request's ``model`` -> ``ModelRegistry.acquire`` -> the engine serving it."""

from bastion.router.admission import Admission
from bastion.router.registry import EngineFactory, ModelRegistry, StateListener
from bastion.router.served import ServedModel

__all__ = ["Admission", "EngineFactory", "ModelRegistry", "ServedModel", "StateListener"]
