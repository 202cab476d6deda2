"""Model registry: a request's ``model`` -> the engine serving it."""

from bastion.router.admission import Admission
from bastion.router.registry import ModelRegistry, ModelState, ServedModel

__all__ = ["Admission", "ModelRegistry", "ModelState", "ServedModel"]
