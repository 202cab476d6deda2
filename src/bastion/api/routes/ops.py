"""Operations endpoints: liveness and readiness. Neither waits for an engine."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from bastion.router import ModelRegistry

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    body = {"ready": registry.ready, "models": registry.states()}
    return JSONResponse(body, status_code=200 if registry.ready else 503)
