"""Admin endpoints for operators: what is loaded and how busy it is, the catalog, and loads,
unloads and swaps.

Every route here needs the ``admin`` scope (decided in ``api/middleware/auth.py``). Removing
or redefining a model the server has loaded, is loading or has requests for is refused (409)
unless the request says ``?force=true``. One load, unload or swap runs at a time: another
gets 409 naming the one in progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from bastion import __version__
from bastion.api.jsonbody import parse_json_object
from bastion.catalog import Catalog, ModelDef
from bastion.errors import (
    BastionError,
    InvalidModelEntryError,
    InvalidParameterError,
    ModelConflictError,
)
from bastion.router import ModelRegistry
from bastion.store.pull import disk_usage, remove, state

router = APIRouter()
log = logging.getLogger(__name__)


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


@router.get("/api/status")
async def status(request: Request) -> JSONResponse:
    registry = _registry(request)
    settings = request.app.state.settings
    router_settings = settings.router
    return JSONResponse(
        {
            "version": __version__,
            "default_model": registry.default_model,
            "slots": settings.engine.slots,
            "max_queue": router_settings.max_queue,
            "router": {
                "preload": router_settings.preload
                if router_settings.preload is not None
                else [registry.default_model],
                "max_loaded": router_settings.max_loaded,
                "max_memory": router_settings.max_memory,
                "idle_ttl": router_settings.idle_ttl,
                "swap_after": router_settings.swap_after,
                "load_timeout": router_settings.load_timeout,
                "webhook": router_settings.webhook_url is not None,
                "swapping": registry.swapping,
                "swaps": registry.swaps,
            },
            "models": registry.states(detail=True),
        }
    )


def _model_name(request_body: bytes) -> str:
    data = parse_json_object(request_body, what='a JSON object like {"model": "NAME"}')
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidParameterError('give the model to swap in as {"model": "NAME"}', param="model")
    return name


async def _timed(change: Awaitable[dict[str, Any]]) -> JSONResponse:
    started = time.perf_counter()
    result = await change
    result["seconds"] = round(time.perf_counter() - started, 3)
    return JSONResponse(result)


@router.post("/api/swap")
async def swap(request: Request) -> JSONResponse:
    """Load a model now, unloading what must go to make room (busy models finish their
    requests first). A load or unload under way completes even if the caller leaves."""
    name = _model_name(await request.body())
    return await _timed(_registry(request).swap(name))


@router.post("/api/models/{name}/load")
async def load_model(request: Request, name: str) -> JSONResponse:
    """Load a model now, unloading least recently used idle models if it does not fit."""
    return await _timed(_registry(request).load(name))


@router.post("/api/models/{name}/unload")
async def unload_model(request: Request, name: str) -> JSONResponse:
    """Unload a model now; 409 while it has requests."""
    return await _timed(_registry(request).unload(name))


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
    state = _registry(request).states().get(name)
    if state is None:
        return
    busy = bool(state.get("running")) or bool(state.get("waiting"))
    # stopped and failed models hold nothing; every other state has (or gets) an engine
    if busy or state["state"] not in ("stopped", "failed"):
        raise ModelConflictError(
            f"'{name}' is {state['state']}"
            + (" and has requests" if busy else "")
            + f" on this server; {action} it with ?force=true",
            param="name",
        )


async def _unload_stale(request: Request, name: str) -> None:
    """After a forced redefinition or removal, unload what the old entry loaded (it loads
    again from the new entry on demand). A busy model stays until an operator unloads it."""
    if _registry(request).card(name) is None:
        return
    try:
        await _registry(request).unload(name)
    except BastionError as exc:
        log.warning("model %s stays loaded from its previous entry: %s", name, exc.message)


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
    if force:
        await _unload_stale(request, model.name)
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
    if force:
        await _unload_stale(request, name)
    removed = remove(request.app.state.home, model)
    if not catalog.is_builtin(name):
        catalog.remove(name)
    return JSONResponse({"id": name, "deleted": True, "files_removed": removed})
