"""bastion: a sovereign LLM server.

Bastion serves local models through an OpenAI-compatible API on hardware its operator owns.
A request flows: uvicorn -> pure ASGI middleware (request id, body limit) -> a thin route in
``bastion.api.routes`` that validates the wire schema (``bastion.api.schemas``) -> the service in
``bastion.api.serving`` -> ``ModelRegistry.resolve`` -> ``Engine.generate(GenerationParams)``,
which yields ``Chunk``s from the embedded llama.cpp engine (one owner thread, continuous
batching over a shared KV cache).

Run it and talk to it::

    $ bastion serve                        # http://127.0.0.1:8000/v1
    >>> from openai import OpenAI
    >>> client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    >>> client.chat.completions.create(
    ...     model="smollm2-135m-instruct",
    ...     messages=[{"role": "user", "content": "What is 2+2?"}],
    ... ).choices[0].message.content
"""

__version__ = "0.1.0"
