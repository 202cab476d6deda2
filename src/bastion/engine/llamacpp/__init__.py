"""The embedded engine: llama.cpp in-process through llama-cpp-python's low-level bindings."""

import os

# llama.cpp's CPU threads are OpenMP threads. Between two decode steps the engine thread spends
# about half a millisecond in Python; with libgomp's default spin the helper threads fall asleep
# in that gap and every step pays to wake them. Spinning longer keeps them ready during
# generation; once idle they still go to sleep within a fraction of a second. Set before
# llama_cpp loads libgomp; an operator's own GOMP_SPINCOUNT wins.
os.environ.setdefault("GOMP_SPINCOUNT", "30000000")

from bastion.engine.llamacpp.engine import LlamaCppEngine  # noqa: E402

__all__ = ["LlamaCppEngine"]
