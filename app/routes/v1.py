"""v1, the simple API: ``GET /v1/model`` and ``POST /v1/predict`` (JSON base64 images, JSON pixel arrays,
or a multipart upload of ``files``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.codecs import InputLimits, check_image_count, decode_images, decode_v1_json, v1_predictions
from app.errors import InvalidInput, PayloadTooLarge
from app.responses import FastJSONResponse
from app.routes.deps import KeyId, ServiceDep, budget_headers, decode, decodes_inline
from app.schemas import ErrorBody, ModelInfo, PredictResponse
from app.service import MODEL_VERSION

router = APIRouter(prefix="/v1", tags=["v1"])

JSON_TYPES = ("application/json", "text/plain", "")
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody} for status in (400, 401, 403, 413, 429, 503)}
PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "PNG or JPEG files"},
        }}},
    },
}


@router.get("/model", response_model=ModelInfo, responses=ERRORS, summary="The served model, its input shape and release policy")
async def model_info(key: KeyId, service: ServiceDep) -> JSONResponse:
    runner = service.require_model(service.name)
    card = runner.card
    document: dict[str, Any] = {
        "name": service.name, "version": MODEL_VERSION,
        "num_classes": card.num_classes, "class_names": list(card.class_names), "input_shape": list(runner.spec.shape),
        "policy": runner.policy.public_config(), "released_per_image": runner.released_count,
        "discloses": service.disclosure.summary if service.disclosure is not None else "",
    }
    if service.settings.show_model_details:  # the owner's choice: hidden unless asked
        document.update(dataset=card.dataset, arch=card.arch)
    return JSONResponse(document, headers=budget_headers(await service.budget_remaining(key)))


@router.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra={"requestBody": PREDICT_BODY},
             summary="Top-1 label and the released top-N (class, logit) pairs per image")
async def predict(request: Request, key: KeyId, service: ServiceDep) -> FastJSONResponse:
    runner = service.require_ready()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        files = await read_files(request, service.limits)
        images = await decode(len(files) == 1, decode_images, files, "files", runner.spec, service.limits)
    elif content_type in JSON_TYPES:
        body = await request.body()
        images = await decode(decodes_inline(len(body)), decode_v1_json, body, runner.spec, service.limits)
    else:
        raise InvalidInput(f"content-type {content_type!r} is not supported; send application/json or multipart/form-data")
    request.state.images = int(images.shape[0])
    result = await service.infer(key, images)
    document = {"model": service.name, "policy": runner.policy.public_config(),
                "predictions": v1_predictions(result.released, runner.card.class_names)}
    return FastJSONResponse(document, headers=budget_headers(result.budget_remaining))


async def read_files(request: Request, limits: InputLimits) -> list[bytes]:
    """The bytes of every ``files`` part of a multipart body; any other part is a 400."""
    try:
        form = await request.form(max_files=limits.max_images, max_fields=limits.max_images, max_part_size=1024 * 1024)
    except StarletteHTTPException as error:
        if str(error.detail).startswith("Too many"):
            raise PayloadTooLarge(f"multipart body: {error.detail}") from None
        raise InvalidInput(f"multipart body: {error.detail}") from None
    files: list[bytes] = []
    try:
        for name, value in form.multi_items():
            if name != "files" or not isinstance(value, UploadFile):
                raise InvalidInput(f"unexpected form field {name!r}: send each image as a file part named 'files'")
            files.append(await value.read())
    finally:
        await form.close()
    check_image_count(len(files), "files", limits)
    return files
