"""The embedded engine in its own supervised process (``engine.isolation: process``).

A native crash in llama.cpp kills the process that hosts it. Run there, it costs the requests
in flight on that model and nothing more: the API process keeps the queue, admission, audit and
``/health``, sees the channel close, fails those requests at once and starts the engine again
with a doubling backoff (``engine.restart_limit``, ``engine.restart_backoff``).

    API process                                   engine process
    IsolatedEngine (Engine protocol)  <- socket pair ->  child.Server -> LlamaCppEngine (thread)
      generate -> ["g", id, request id, params]        one task per generation
      <- ["c", id, chunk...] ... ["e", id]            chunks as the engine coalesced them

The wire format is in ``wire``; spawning and stopping the process in ``process``; the child's
entry point is ``python -m bastion.engine.isolation.child``. The factory builds it::

    from bastion.engine.factory import build_engine
    engine = build_engine(spec, EngineSettings(isolation="process"))
    await engine.start()            # the child loads and self-tests the model
    async for chunk in engine.generate(GenerationParams(prompt="Hello", max_tokens=8)):
        print(chunk.text, end="")
    await engine.close()            # streams still running end; the child exits
"""

from bastion.engine.isolation.engine import IsolatedEngine

__all__ = ["IsolatedEngine"]
