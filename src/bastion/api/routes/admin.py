"""Admin endpoints for operators: what is loaded and how busy it is, and the catalog.

Every route here needs the ``admin`` scope (decided in ``api/middleware/auth.py``). Removing
or redefining a model the server has loaded, is loading or has requests for is refused (409)
unless the request says ``?force=true``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from bastion import __version__
from bastion.api.jsonbody import parse_json_object
from bastion.catalog import Catalog, ModelDef
from bastion.errors import (
    InvalidModelEntryError,
    InvalidParameterError,
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


def _refuse_if_in_use(request: Request, name: str, action: str) -> None:
    registry: ModelRegistry = request.app.state.registry
    state = registry.states().get(name)
    if state is None:
        return
    busy = bool(state.get("running")) or bool(state.get("waiting"))
    if busy or state["state"] in ("loading", "ready"):
        raise ModelConflictError(
            f"'{name}' is {state['state']}"
            + (" and has requests" if busy else "")
            + f" on this server; {action} it with ?force=true",
            param="name",
        )


@router.post("/api/models")
async def add_model(request: Request, force: bool = False) -> JSONResponse:
    """Validate the whole entry first (422 listing every field), then persist it. An
    existing entry is replaced only with ``force``; a new source discards the old files."""
    data = parse_json_object(await request.body(), what="a JSON object (one model entry)")
    catalog = _catalog(request)
    try:
        model = catalog.validate(data)
    except InvalidParameterError as exc:
        raise InvalidModelEntryError(exc.message, param="model") from None
    if model.name in catalog.entries and not force:
        _refuse_if_in_use(request, model.name, "redefine")
    catalog.add(data, replace=force)
    return JSONResponse(_entry(request, catalog.get(model.name)), status_code=201)


@router.delete("/api/models/{name}")
async def delete_model(request: Request, name: str, force: bool = False) -> JSONResponse:
    catalog = _catalog(request)
    model = catalog.get(name)
    if not force:
        _refuse_if_in_use(request, name, "remove")
    if model.local_path is not None:
        raise ModelConflictError(
            f"'{name}' is a local model: bastion never deletes its directory", param="name"
        )
    removed = remove(request.app.state.home, model)
    if not catalog.is_builtin(name):
        catalog.remove(name)
    return JSONResponse({"id": name, "deleted": True, "files_removed": removed})
