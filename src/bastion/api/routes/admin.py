"""Admin endpoints for operators: what is loaded and how busy it is."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from bastion import __version__
from bastion.catalog import Catalog, ModelDef
from bastion.errors import (
    InvalidModelEntryError,
    InvalidParameterError,
    InvalidRequestError,
    MalformedJSONError,
    ModelConflictError,
)
from bastion.router import ModelRegistry
from bastion.store.pull import disk_usage, remove, state

router = APIRouter()


@router.get("/api/status")
async def status(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    settings = request.app.state.settings
    return JSONResponse(
        {
            "version": __version__,
            "default_model": registry.default_model,
            "slots": settings.engine.slots,
            "max_queue": settings.engine.max_queue,
            "models": registry.states(detail=True),
        }
    )


def _catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


def _entry(request: Request, model: ModelDef) -> dict[str, Any]:
    home = request.app.state.home
    return {
        **model.model_dump(mode="json", exclude_defaults=True),
        "source": model.source_kind,
        "state": state(home, model),
        "size_bytes": disk_usage(home, model),
        "builtin": _catalog(request).is_builtin(model.name),
    }


@router.get("/api/models")
async def list_models(request: Request) -> JSONResponse:
    entries = [_entry(request, m) for m in _catalog(request)]
    return JSONResponse({"object": "list", "data": entries, "warnings": _catalog(request).warnings})


@router.post("/api/models")
async def add_model(request: Request) -> JSONResponse:
    """Validate the whole entry first (422 listing every field), then persist it."""
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MalformedJSONError("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object (one model entry).")
    catalog = _catalog(request)
    try:
        model = catalog.validate(data)
    except InvalidParameterError as exc:
        raise InvalidModelEntryError(exc.message, param="model") from None
    if model.name in catalog.entries and not catalog.is_builtin(model.name):
        raise ModelConflictError(f"a model named '{model.name}' already exists", param="name")
    catalog.add(data)
    return JSONResponse(_entry(request, catalog.get(model.name)), status_code=201)


@router.delete("/api/models/{name}")
async def delete_model(request: Request, name: str) -> JSONResponse:
    catalog = _catalog(request)
    model = catalog.get(name)
    if model.local_path is not None:
        raise ModelConflictError(
            f"'{name}' is a local model: bastion never deletes its directory", param="name"
        )
    removed = remove(request.app.state.home, model)
    if not catalog.is_builtin(name):
        catalog.remove(name)
    return JSONResponse({"id": name, "deleted": True, "files_removed": removed})
