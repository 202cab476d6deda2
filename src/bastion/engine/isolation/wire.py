"""The channel between the API process and an engine process: framed JSON over a socket pair.

A frame is a 4-byte big-endian length and a UTF-8 JSON array whose first item names it. The
stream of chunks dominates, so a chunk is a flat array (no keys to encode or parse per token).

Parent -> child::

    ["init", {spec...}, {settings...}]      first frame: what to load
    ["g", id, request_id, {params...}]      generate
    ["k", id]                               cancel: the client went away
    ["q"]                                   close: finish what runs, then exit

Child -> parent::

    ["loaded", {info...}] | ["load_error", {error...}]    answer to init
    ["c", id, text, prompt, completion, finish, cached, queued, running[, logprobs]]
    ["e", id, running]                                    end of a generation
    ["x", id, {error...}]                                 a generation failed
    ["r", running]                                        sequences decoding changed
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

from bastion import errors
from bastion.engine.base import (
    ChatMessage,
    Chunk,
    GenerationParams,
    ModelInfo,
    ModelSpec,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)
from bastion.errors import BastionError, EngineError

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
"""Larger frames mean a broken peer (request bodies are capped far below this)."""

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def frame(message: list[Any]) -> bytes:
    data = _dumps(message).encode()
    return HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> list[Any]:
    """The next frame; ``asyncio.IncompleteReadError`` at EOF."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_FRAME:
        raise ProtocolError(f"a frame of {size} bytes")
    message = json.loads(await reader.readexactly(size))
    if not isinstance(message, list) or not message:
        raise ProtocolError("a frame that is not a non-empty array")
    return message


# ---- what to load ---------------------------------------------------------------------------


def encode_spec(spec: ModelSpec) -> dict[str, Any]:
    """The child's spec: the model's own settings are already in the settings sent with it."""
    return {
        "name": spec.name,
        "kind": spec.kind,
        "weights": None if spec.weights is None else str(spec.weights),
        "digest": spec.digest,
        "identity": None if spec.identity is None else list(spec.identity),
        "chat_template": spec.chat_template,
        "completion_only": spec.completion_only,
    }


def decode_spec(data: dict[str, Any]) -> ModelSpec:
    identity = data["identity"]
    return ModelSpec(
        name=data["name"],
        kind=data["kind"],
        weights=None if data["weights"] is None else Path(data["weights"]),
        digest=data["digest"],
        identity=None if identity is None else tuple(identity),
        chat_template=data["chat_template"],
        completion_only=data["completion_only"],
    )


def encode_info(info: ModelInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def decode_info(data: dict[str, Any]) -> ModelInfo:
    return ModelInfo(**data)


# ---- requests -------------------------------------------------------------------------------


def encode_params(params: GenerationParams) -> dict[str, Any]:
    return dataclasses.asdict(params)


def decode_params(data: dict[str, Any]) -> GenerationParams:
    sampling = dict(data["sampling"])
    sampling["logit_bias"] = tuple((int(t), float(b)) for t, b in sampling["logit_bias"])
    messages = data["messages"]
    return GenerationParams(
        prompt=data["prompt"],
        messages=None if messages is None else tuple(ChatMessage(**m) for m in messages),
        max_tokens=data["max_tokens"],
        stop=tuple(data["stop"]),
        logprobs=data["logprobs"],
        sampling=SamplingParams(**sampling),
    )


# ---- chunks ---------------------------------------------------------------------------------


def chunk_frame(request: int, chunk: Chunk, running: int) -> bytes:
    message: list[Any] = [
        "c",
        request,
        chunk.text,
        chunk.prompt_tokens,
        chunk.completion_tokens,
        chunk.finish_reason,
        chunk.cached_tokens,
        chunk.queued,
        running,
    ]
    if chunk.logprobs:
        message.append(
            [
                [lp.token, lp.logprob, lp.bytes, [[t.token, t.logprob, t.bytes] for t in lp.top]]
                for lp in chunk.logprobs
            ]
        )
    return frame(message)


def decode_chunk(message: list[Any]) -> Chunk:
    logprobs: tuple[TokenLogprob, ...] = ()
    if len(message) > 9:
        logprobs = tuple(
            TokenLogprob(
                token,
                logprob,
                tuple(raw),
                tuple(TopLogprob(t, lp, tuple(b)) for t, lp, b in top),
            )
            for token, logprob, raw, top in message[9]
        )
    return Chunk(
        message[2],
        message[3],
        message[4],
        logprobs,
        message[5],
        message[6],
        message[7],
    )


# ---- errors ---------------------------------------------------------------------------------


def encode_error(exc: BaseException) -> dict[str, Any]:
    """A caller-facing error as data; anything that is not a ``BastionError`` is reported as
    an engine failure without its text (it may quote the prompt)."""
    if not isinstance(exc, BastionError):
        exc = EngineError("the engine failed; the request was not completed")
    data: dict[str, Any] = {
        "classes": [cls.__name__ for cls in type(exc).__mro__],
        "message": exc.message,
        "param": exc.param,
        "status": exc.status,
    }
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int):
        data["retry_after"] = retry_after
    return data


def decode_error(data: dict[str, Any]) -> BastionError:
    """The error rebuilt as the nearest class of ``bastion.errors`` in its hierarchy (so a
    400 stays a 400); EngineError when none is known."""
    message, param = str(data.get("message", "")), data.get("param")
    cls: type[BastionError] = EngineError
    for name in data.get("classes", ()):
        found = getattr(errors, str(name), None)
        if isinstance(found, type) and issubclass(found, BastionError):
            if found is not BastionError:
                cls = found
            break
    try:
        error = cls(message, param=param)
    except TypeError:  # a class whose constructor takes other arguments
        error = cls(message)
        error.param = param if isinstance(param, str) else None
    retry_after = data.get("retry_after")
    if isinstance(retry_after, int) and hasattr(error, "retry_after"):
        error.retry_after = retry_after
    return error
