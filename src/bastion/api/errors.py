"""Map exceptions to OpenAI error envelopes, by class, in one place."""

from __future__ import annotations

import json
import logging
import re
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import Send

from bastion.errors import (
    BastionError,
    InvalidParameterError,
    InvalidRequestError,
    MethodNotAllowedError,
    RouteNotFoundError,
)
from bastion.log import escape

log = logging.getLogger(__name__)


def error_response(error: BastionError) -> JSONResponse:
    return JSONResponse(error.envelope(), status_code=error.status, headers=error.headers())


async def send_error(send: Send, error: BastionError) -> None:
    """Send an error from raw ASGI middleware (before any route ran)."""
    body = json.dumps(error.envelope()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # the request body may be unread: do not reuse this connection
                (b"connection", b"close"),
                *((k.lower().encode(), v.encode()) for k, v in error.headers().items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def param_path(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "content")`` -> ``messages[0].content``; union tags are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "body" or part in _TYPE_TAGS or not _FIELD.match(part):
            continue
        else:
            out += f".{part}" if out else part
    return out


def from_validation_error(exc: ValidationError | RequestValidationError) -> BastionError:
    errors = exc.errors()
    if not errors:
        return InvalidRequestError("The request body is invalid.")
    first = errors[0]
    if first.get("type") in ("json_invalid", "json_type"):
        return InvalidRequestError("The request body is not valid JSON.")
    param = param_path(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if param:
        return InvalidParameterError(f"Invalid value for '{param}': {message}", param=param)
    return InvalidRequestError(f"The request body is invalid: {message}")


async def _bastion_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BastionError)  # noqa: S101 - registered for this class only
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError | ValidationError)  # noqa: S101
    return error_response(from_validation_error(exc))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)  # noqa: S101
    error: BastionError
    if exc.status_code == 404:
        error = RouteNotFoundError("Not found.")
    elif exc.status_code == 405:
        error = MethodNotAllowedError("Method not allowed.")
    else:
        error = InvalidRequestError("The request is invalid.")
    return error_response(error)


def log_unhandled(exc: BaseException) -> None:
    """Log an exception nothing handled: its message escaped (it may quote client input),
    then its frames, which hold only code."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unhandled %s: %s\n%s", type(exc).__name__, escape(str(exc), spaces=True), frames)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log_unhandled(exc)
    return error_response(BastionError("The server had an internal error."))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BastionError, _bastion_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
