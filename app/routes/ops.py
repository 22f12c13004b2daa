"""Operations routes: liveness and readiness (always open) and Prometheus metrics (the metrics key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from app.routes.deps import ServiceDep, metrics_reader

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded and warmed up (else 503)")
async def readyz(service: ServiceDep) -> JSONResponse:
    service.require_ready()
    return JSONResponse({"status": "ready", "model": service.name})


@router.get("/metrics", summary="Prometheus metrics (the metrics key only)", response_class=Response,
            dependencies=[Depends(metrics_reader)])
async def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.exposition(), media_type=service.metrics.content_type)

