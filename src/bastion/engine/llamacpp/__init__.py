"""The embedded engine: llama.cpp in-process through llama-cpp-python's low-level bindings."""

import os

# llama.cpp's CPU threads are OpenMP threads. Between two decode steps the engine thread spends
# about half a millisecond in Python; with libgomp's default spin the helper threads fall asleep
# in that gap and every step pays to wake them. Spinning longer keeps them ready during
# generation; once idle they go to sleep within about 0.1 s (measured). Set before
# llama_cpp loads libgomp; an operator's own GOMP_SPINCOUNT wins.
os.environ.setdefault("GOMP_SPINCOUNT", "3000000")

from bastion.engine.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
