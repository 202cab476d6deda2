"""Service logic for chat and text completions: run the engine, shape OpenAI responses.

Routes stay thin: they parse the body and call ``complete_chat`` or ``complete_text``. Errors
raised before the first chunk become normal error responses (right status code); errors after
streaming began become an SSE ``error`` event followed by ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from bastion.api.errors import log_unhandled
from bastion.api.schemas import ChatCompletionRequest, CompletionRequest
from bastion.engine import Chunk, TokenLogprob
from bastion.errors import BastionError, EngineError
from bastion.router import ServedModel

log = logging.getLogger(__name__)
T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientDisconnectedError(BastionError):
    """The client went away before the response was ready (nobody reads this response)."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def race_disconnect(awaitable: Awaitable[T], receive: Receive) -> T:
    """Await ``awaitable`` unless the client disconnects first (then cancel it)."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        disconnected = not work.done()
        if disconnected:
            work.cancel()
        # Let both finish unwinding before anyone closes the generator they iterate.
        await asyncio.gather(work, watcher, return_exceptions=True)
    if disconnected or work.cancelled():
        raise ClientDisconnectedError("The client closed the connection.")
    return work.result()


@dataclass(frozen=True)
class _Meta:
    id: str
    created: int
    model: str
    fingerprint: str

    @classmethod
    def new(cls, prefix: str, model: ServedModel) -> _Meta:
        info = model.info
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), info.name, model.fingerprint)

    def head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }


def _usage(last: Chunk) -> dict[str, Any]:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": last.cached_tokens},
    }


class _PlainEvent:
    """A pre-encoded stream event for the common chunk: text only, no logprobs, not last.

    Streaming pays per token on the event loop, which shares the cores with llama.cpp; this
    turns the per-token work into one string join.
    """

    def __init__(self, meta: _Meta, obj: str, before: str, after: str, usage: bool) -> None:
        head = json.dumps(meta.head(obj), separators=(",", ":"))[:-1]
        self._before = f'data: {head},"choices":[{{"index":0,{before}'
        self._after = after + ('}],"usage":null}\n\n' if usage else "}]}\n\n")

    def encode(self, text: str) -> bytes:
        return (self._before + json.dumps(text) + self._after).encode()


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _sse_error(error: BastionError) -> bytes:
    return b"event: error\ndata: " + json.dumps(error.envelope()).encode() + b"\n\n"


# ---- logprobs in the two OpenAI shapes ---------------------------------------------------


def _chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.bytes),
                "top_logprobs": [
                    {"token": a.token, "logprob": a.logprob, "bytes": list(a.bytes)} for a in t.top
                ],
            }
            for t in items
        ],
        "refusal": None,
    }


def _text_logprobs(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [t.logprob for t in items],
        "top_logprobs": [{a.token: a.logprob for a in t.top} for t in items],
        "text_offset": offsets,
    }


# ---- the shared run: first chunk, then stream or collect ----------------------------------

Shape = Callable[[Chunk, bool], dict[str, Any]]
"""Builds one streamed event from a chunk (second argument: first chunk of the stream)."""


async def _run(
    chunks: AsyncGenerator[Chunk, None],
    receive: Receive,
    *,
    stream: bool,
    include_usage: bool,
    meta: _Meta,
    obj: str,
    shape: Shape,
    collect: Callable[[list[Chunk]], dict[str, Any]],
    plain: _PlainEvent | None,
    record: dict[str, Any],
) -> Response:
    """``record`` (the request's audit record) receives the token counts as they settle, and
    the generated text when it has a ``completion`` entry (``audit.include_content``)."""
    texts: list[str] | None = [] if "completion" in record else None
    gen = aclosing(chunks)
    iterator = await gen.__aenter__()
    started = time.perf_counter()
    try:
        first = await race_disconnect(anext(iterator), receive)
    except BaseException:
        await gen.__aexit__(None, None, None)
        raise
    record["ttft"] = time.perf_counter() - started
    if texts is not None:
        texts.append(first.text)
    record["queued"] = first.queued
    if not stream:
        collected = [first]
        try:
            await race_disconnect(_drain(iterator, collected), receive)
        finally:
            # also when the client left: what was generated is accounted for
            await gen.__aexit__(None, None, None)
            if texts is not None:
                texts.extend(chunk.text for chunk in collected[1:])
            _account(record, collected[-1], texts)
        return JSONResponse(collect(collected))

    async def events() -> AsyncGenerator[bytes, None]:
        last = first
        try:
            yield _sse(_with_usage(shape(first, True), include_usage))
            async for chunk in iterator:
                last = chunk
                if texts is not None:
                    texts.append(chunk.text)
                if plain is not None and chunk.text and chunk.finish_reason is None:
                    yield plain.encode(chunk.text)
                else:
                    yield _sse(_with_usage(shape(chunk, False), include_usage))
            if include_usage:
                yield _sse({**meta.head(obj), "choices": [], "usage": _usage(last)})
        except BastionError as exc:
            log.warning("stream failed after it began: %s", exc.message)
            yield _sse_error(exc)
        except Exception as exc:  # noqa: BLE001 - the client hears an SSE error instead
            log.error("stream failed after it began")  # noqa: TRY400 - the next line has it
            log_unhandled(exc)  # escaped: an engine error's text can quote the prompt
            yield _sse_error(EngineError("The engine failed while streaming."))
        finally:
            _account(record, last, texts)
            await gen.__aexit__(None, None, None)
        yield b"data: [DONE]\n\n"

    return _EventStream(events())


class _EventStream(StreamingResponse):
    """Closes its event generator before it returns, also when the client went away in the
    middle: the generator's ``finally`` (token counts, audited text, engine cancellation)
    then runs before the audit middleware writes the request's record, not whenever the
    abandoned generator is garbage-collected."""

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()


def _account(record: dict[str, Any], last: Chunk, texts: list[str] | None) -> None:
    record["prompt_tokens"] = last.prompt_tokens
    record["completion_tokens"] = last.completion_tokens
    if texts is not None:
        record["completion"] = "".join(texts)


def _with_usage(event: dict[str, Any], include_usage: bool) -> dict[str, Any]:
    if include_usage:
        event["usage"] = None
    return event


async def _drain(iterator: AsyncIterator[Chunk], into: list[Chunk]) -> None:
    async for chunk in iterator:
        into.append(chunk)


# ---- chat completions --------------------------------------------------------------------


async def complete_chat(
    model: ServedModel, req: ChatCompletionRequest, receive: Receive, record: dict[str, Any]
) -> Response:
    params = req.to_generation_params()
    meta = _Meta.new("chatcmpl", model)
    with_logprobs = params.logprobs is not None
    plain = (
        None
        if with_logprobs
        else _PlainEvent(
            meta,
            "chat.completion.chunk",
            '"delta":{"content":',
            '},"logprobs":null,"finish_reason":null',
            req.include_usage,
        )
    )

    def shape(chunk: Chunk, first: bool) -> dict[str, Any]:
        delta: dict[str, Any] = (
            {"role": "assistant", "content": chunk.text}
            if first
            else ({"content": chunk.text} if chunk.text else {})
        )
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": _chat_logprobs(list(chunk.logprobs)) if with_logprobs else None,
            "finish_reason": chunk.finish_reason,
        }
        return {**meta.head("chat.completion.chunk"), "choices": [choice]}

    def collect(chunks: list[Chunk]) -> dict[str, Any]:
        last = chunks[-1]
        logprobs = [lp for c in chunks for lp in c.logprobs]
        choice = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "".join(c.text for c in chunks),
                "refusal": None,
            },
            "logprobs": _chat_logprobs(logprobs) if with_logprobs else None,
            "finish_reason": last.finish_reason,
        }
        return {**meta.head("chat.completion"), "choices": [choice], "usage": _usage(last)}

    return await _run(
        model.generate(params),
        receive,
        stream=req.stream,
        include_usage=req.include_usage,
        meta=meta,
        obj="chat.completion.chunk",
        shape=shape,
        collect=collect,
        plain=plain,
        record=record,
    )


# ---- text completions --------------------------------------------------------------------


async def complete_text(
    model: ServedModel, req: CompletionRequest, receive: Receive, record: dict[str, Any]
) -> Response:
    params = req.to_generation_params()
    meta = _Meta.new("cmpl", model)
    echo = req.prompt_text if req.echo else ""
    with_logprobs = params.logprobs is not None
    plain = (
        None
        if with_logprobs
        else _PlainEvent(
            meta,
            "text_completion",
            '"text":',
            ',"logprobs":null,"finish_reason":null',
            req.include_usage,
        )
    )
    offset = len(echo)

    def shape(chunk: Chunk, first: bool) -> dict[str, Any]:
        nonlocal offset
        text = (echo if first else "") + chunk.text
        logprobs = _text_logprobs(list(chunk.logprobs), offset) if with_logprobs else None
        offset += len(chunk.text)
        choice = {
            "index": 0,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": chunk.finish_reason,
        }
        return {**meta.head("text_completion"), "choices": [choice]}

    def collect(chunks: list[Chunk]) -> dict[str, Any]:
        last = chunks[-1]
        items = [lp for c in chunks for lp in c.logprobs]
        choice = {
            "index": 0,
            "text": echo + "".join(c.text for c in chunks),
            "logprobs": _text_logprobs(items, len(echo)) if with_logprobs else None,
            "finish_reason": last.finish_reason,
        }
        return {**meta.head("text_completion"), "choices": [choice], "usage": _usage(last)}

    return await _run(
        model.generate(params),
        receive,
        stream=req.stream,
        include_usage=req.include_usage,
        meta=meta,
        obj="text_completion",
        shape=shape,
        collect=collect,
        plain=plain,
        record=record,
    )
