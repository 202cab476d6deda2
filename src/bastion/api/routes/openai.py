"""OpenAI-compatible endpoints."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from bastion.api import serving
from bastion.api.errors import from_validation_error
from bastion.api.jsonbody import parse_json_object
from bastion.api.schemas import ChatCompletionRequest, CompletionRequest
from bastion.errors import ModelNotChatError, ModelNotFoundError
from bastion.log import escape
from bastion.router import ModelRegistry, ServedModel

log = logging.getLogger(__name__)
router = APIRouter()
M = TypeVar("M", bound=BaseModel)
LOGGED_FIELDS = 16
"""Unsupported field names named in the log line; the rest are counted (one line stays short)."""


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def parse_body(request: Request, model: type[M]) -> M:
    """Parse JSON (NaN literals allowed, so they can be refused by name) and validate."""
    data = parse_json_object(await request.body())
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    if parsed.model_extra:
        names = sorted(parsed.model_extra)
        shown = ", ".join(escape(name, limit=64) for name in names[:LOGGED_FIELDS])
        more = f" and {len(names) - LOGGED_FIELDS} more" if len(names) > LOGGED_FIELDS else ""
        log.info("ignoring unsupported fields: %s%s", shown, more)
    return parsed


def _audit(
    request: Request, model: ServedModel, body: ChatCompletionRequest | CompletionRequest
) -> dict[str, Any]:
    """This request's audit record (written by the audit middleware when it ends). With
    ``audit.include_content`` it holds the prompt, and serving adds the completion text."""
    record: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("audit", {})
    record.update(model=model.info.name, model_digest=model.fingerprint)
    if request.app.state.settings.audit.include_content:
        record.update(prompt=body.prompt_for_audit(), completion="")
    return record


async def _acquire(request: Request, name: str | None) -> ServedModel:
    """The model for this request; one that must load first is waited for unless the
    client leaves (then its place in the queue goes too)."""
    registry = _registry(request)
    served = registry.acquire_nowait(name)
    if served is None:
        served = await serving.race_disconnect(registry.acquire(name), request.receive)
    return served


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    model = await _acquire(request, body.model)
    try:
        if not model.info.chat:
            # A base model under a guessed chat format answers with the format's markers.
            raise ModelNotChatError(
                f"The model '{model.info.name}' is completion only (a base model without a "
                "chat template): send it a prompt at /v1/completions, or use a chat model here.",
                param="model",
            )
        record = _audit(request, model, body)
        return await serving.complete_chat(model, body, request.receive, record)
    finally:
        # The response has started (or failed): the admission queue holds the model now.
        model.release()


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    model = await _acquire(request, body.model)
    try:
        record = _audit(request, model, body)
        return await serving.complete_text(model, body, request.receive, record)
    finally:
        model.release()


def _model_card(name: str, state: dict[str, object], served: ServedModel | None) -> dict[str, Any]:
    """Every catalog model has a card with its ``state``; a loaded one also says which
    verified weights answer."""
    if served is None or state["state"] != "ready":
        return {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "bastion",
            "state": state["state"],
        }
    info, local = served.info, served.local
    return {
        "id": info.name,
        "object": "model",
        "created": info.created,
        "owned_by": "bastion",
        "state": state["state"],
        "digest": f"sha256:{info.digest}",
        "manifest_digest": f"sha256:{local.manifest_digest}",
        "signer": local.signer,
        # what answers from this model carry: compare with a response's system_fingerprint
        "system_fingerprint": served.fingerprint,
        "context_length": info.context_length,
        "capabilities": {"chat": info.chat, "completion": True},
    }


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    registry = _registry(request)
    states = registry.states()
    # Loaded models first (what answers without a wait), then the rest in catalog order.
    names = sorted(states, key=lambda name: states[name]["state"] != "ready")
    cards = [_model_card(name, states[name], registry.card(name)) for name in names]
    return JSONResponse({"object": "list", "data": cards})


@router.get("/v1/models/{name}")
async def get_model(request: Request, name: str) -> JSONResponse:
    registry = _registry(request)
    state = registry.states().get(name)
    if state is None:
        raise ModelNotFoundError(f"The model '{name}' does not exist.", param="model")
    return JSONResponse(_model_card(name, state, registry.card(name)))
