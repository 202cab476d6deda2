"""Model registry: a request's ``model`` -> the engine serving it."""

from bastion.router.registry import ModelRegistry, ModelState

__all__ = ["ModelRegistry", "ModelState"]
