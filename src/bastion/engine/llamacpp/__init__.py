"""The embedded engine: llama.cpp in-process through llama-cpp-python's low-level bindings."""

from bastion.engine.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
