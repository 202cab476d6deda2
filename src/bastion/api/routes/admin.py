"""Admin endpoints for operators: what is loaded and how busy it is."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from bastion import __version__
from bastion.router import ModelRegistry

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
