"""v2, the Open Inference Protocol (KServe v2 / Triton) REST API.

Health answers are an empty body with status 200 (true) or 400 (false), as the protocol asks. Model routes
take the model name from the URL and optionally ``/versions/1``; an unknown name or version is a 404.
Errors are ``{"error": message, "code": ...}``.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.codecs import BINARY_HEADER, V2_INPUT, decode_v2_request, v2_output_specs, v2_outputs
from app.responses import FastJSONResponse
from app.routes.deps import KeyId, ServiceDep, budget_headers, decode, decodes_inline
from app.schemas import ErrorBody, InferenceResponse, ModelMetadata, ServerMetadata
from app.service import MODEL_VERSION

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

SERVER_NAME = "stingy-teacher"
PLATFORM = "pytorch"
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 413, 429, 503)}
INFER_BODY = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}


@cache
def server_version() -> str:
    try:
        return version(SERVER_NAME)
    except PackageNotFoundError:
        return "unknown"


def _health(ok: bool) -> Response:
    return Response(status_code=200 if ok else 400)


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> dict[str, object]:
    return {"name": SERVER_NAME, "version": server_version(), "extensions": []}


@router.get("/health/live", summary="Server live (200, empty body)")
async def server_live() -> Response:
    return _health(True)


@router.get("/health/ready", summary="Server ready: 200 once warmed up, else 400 (empty body)")
async def server_ready(service: ServiceDep) -> Response:
    return _health(service.ready)


@router.get("/models/{name}", response_model=ModelMetadata, responses=ERRORS, summary="Model metadata")
@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS, include_in_schema=False)
async def model_metadata(name: str, key: KeyId, service: ServiceDep, version: str | None = None) -> JSONResponse:
    runner = service.require_model(name, version)
    batch = -1
    document = {
        "name": service.name, "versions": [MODEL_VERSION], "platform": PLATFORM,
        "inputs": [{"name": V2_INPUT, "datatype": "FP32", "shape": [batch, *runner.spec.shape]}],
        "outputs": [{"name": name, "datatype": datatype, "shape": shape}
                    for name, (datatype, shape) in v2_output_specs(batch, runner.released_count, runner.num_classes).items()],
    }
    return JSONResponse(document)


@router.get("/models/{name}/ready", responses=ERRORS, summary="Model ready: 200 once warmed up, else 400 (empty body)")
@router.get("/models/{name}/versions/{version}/ready", responses=ERRORS, include_in_schema=False)
async def model_ready(name: str, key: KeyId, service: ServiceDep, version: str | None = None) -> Response:
    service.require_model(name, version)
    return _health(service.ready)


@router.post("/models/{name}/infer", response_model=InferenceResponse, responses=ERRORS,
             openapi_extra={"requestBody": INFER_BODY}, summary="Inference")
@router.post("/models/{name}/versions/{version}/infer", response_model=InferenceResponse, responses=ERRORS,
             openapi_extra={"requestBody": INFER_BODY}, include_in_schema=False)
async def infer(name: str, request: Request, key: KeyId, service: ServiceDep, version: str | None = None) -> FastJSONResponse:
    service.require_model(name, version)
    runner = service.require_ready()
    body = await request.body()
    decoded = await decode(decodes_inline(len(body)), decode_v2_request, body, request.headers.get(BINARY_HEADER), runner.spec, service.limits)
    request.state.images = int(decoded.images.shape[0])
    result = await service.infer(key, decoded.images)
    document: dict[str, object] = {"model_name": service.name, "model_version": MODEL_VERSION}
    if decoded.id is not None:
        document["id"] = decoded.id
    document["outputs"] = v2_outputs(result.released, runner.num_classes, decoded.outputs)
    return FastJSONResponse(document, headers=budget_headers(result.budget_remaining))
