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
    data = await reader.readexactly(size)
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise ProtocolError(f"a frame that is not JSON ({type(exc).__name__})") from None
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        raise ProtocolError("a frame that is not a non-empty array named by a string")
    return message


# What each frame from the engine process holds after its name (see the module docstring).
_INT = (int,)
_NUMBER = (int, float)
_CHILD_FRAMES: dict[str, tuple[tuple[type, ...], ...]] = {
    "c": (_INT, (str,), _INT, _INT, (str, type(None)), _INT, _NUMBER, _INT),
    "e": (_INT, _INT),
    "x": (_INT, (dict,)),
    "r": (_INT,),
}
_FINISH_REASONS = (None, "stop", "length")


def check_child_frame(message: list[Any]) -> str:
    """The frame's kind once its items have the types its kind needs; ``ProtocolError``
    otherwise (a chunk's logprobs are checked as they are decoded)."""
    kind = message[0]
    shape = _CHILD_FRAMES.get(kind)
    if shape is None:
        raise ProtocolError(f"an unknown frame {kind[:16]!r}")
    extra = 1 if kind == "c" and len(message) == len(shape) + 2 else 0
    if len(message) != len(shape) + 1 + extra:
        raise ProtocolError(f"a {kind!r} frame of {len(message)} items")
    for index, (value, types) in enumerate(zip(message[1:], shape, strict=False), 1):
        if isinstance(value, bool) or not isinstance(value, types):
            raise ProtocolError(f"a {kind!r} frame whose item {index} is {type(value).__name__}")
    if kind == "c" and message[5] not in _FINISH_REASONS:
        raise ProtocolError("a 'c' frame with an unknown finish reason")
    return str(kind)


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


def decode_info(data: object) -> ModelInfo:
    """The loaded model's info; ``ProtocolError`` when it is not what ``encode_info`` sends."""
    if not isinstance(data, dict) or set(data) != set(_INFO_TYPES):
        raise ProtocolError("model info with other fields than ModelInfo's")
    for name, wanted in _INFO_TYPES.items():
        value = data[name]
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise ProtocolError(f"model info whose {name} is {type(value).__name__}")
    return ModelInfo(**data)


_INFO_TYPES: dict[str, type] = {
    "name": str,
    "digest": str,
    "context_length": int,
    "created": int,
    "chat": bool,
    "memory": int,
}


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
    """A ``"c"`` frame that ``check_child_frame`` passed, as a Chunk."""
    logprobs: tuple[TokenLogprob, ...] = ()
    if len(message) > 9:
        try:
            logprobs = tuple(
                TokenLogprob(
                    _text(token),
                    float(logprob),
                    _bytes(raw),
                    tuple(TopLogprob(_text(t), float(lp), _bytes(b)) for t, lp, b in top),
                )
                for token, logprob, raw, top in message[9]
            )
        except (TypeError, ValueError) as exc:
            raise ProtocolError("a 'c' frame with malformed logprobs") from exc
    return Chunk(
        message[2],
        message[3],
        message[4],
        logprobs,
        message[5],
        message[6],
        message[7],
    )


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(type(value).__name__)
    return value


def _bytes(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in value
    ):
        raise TypeError("not a list of byte values")
    return tuple(value)


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
    if not isinstance(param, str):
        param = None
    classes = data.get("classes")
    cls: type[BastionError] = EngineError
    for name in classes if isinstance(classes, list) else ():
        found = getattr(errors, str(name), None)
        if isinstance(found, type) and issubclass(found, BastionError):
            if found is not BastionError:
                cls = found
            break
    try:
        error = cls(message, param=param)
    except TypeError:  # a class whose constructor takes other arguments
        error = cls(message)
        error.param = param
    retry_after = data.get("retry_after")
    if isinstance(retry_after, int) and hasattr(error, "retry_after"):
        error.retry_after = retry_after
    return error
