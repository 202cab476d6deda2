"""Operations endpoints: liveness and readiness. Neither waits for an engine."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from bastion.router import ModelRegistry

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format; behind the same authentication as everything but /health."""
    registry: ModelRegistry = request.app.state.registry
    body = request.app.state.metrics.render(lambda: registry.states(detail=True))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    body = {"ready": registry.ready, "models": registry.states()}
    return JSONResponse(body, status_code=200 if registry.ready else 503)
