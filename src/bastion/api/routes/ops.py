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
    body = request.app.state.metrics.render(
        lambda: registry.states(detail=True), swaps=registry.swaps
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    body: dict[str, object] = {"ready": registry.ready, "models": registry.states()}
    if not registry.ready:
        # /ready is public: why a model failed (paths, digests) stays on the admin route.
        body["detail"] = "why a model is not ready: GET /api/status (admin) or the server log"
    return JSONResponse(body, status_code=200 if registry.ready else 503)
