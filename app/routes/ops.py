"""Operations routes, always open: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from app.routes.deps import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded and warmed up (else 503)")
async def readyz(service: ServiceDep) -> JSONResponse:
    service.require_ready()
    return JSONResponse({"status": "ready", "model": service.name})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.exposition(), media_type=service.metrics.content_type)

