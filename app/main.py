"""The application factory: ``create_app(settings)`` wires routes, error handlers, middleware and the
lifespan (load the checkpoint, warm up in the background, drain on shutdown)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic.json_schema import models_json_schema

from app.errors import install_error_handlers
from app.fastpath import FastPathMiddleware
from app.middleware import BodyLimitMiddleware, ObservabilityMiddleware
from app.routes import ops, v1, v2
from app.schemas import InferenceRequest, PredictRequest
from app.service import Service
from app.settings import ServeSettings

DESCRIPTION = """Serves a classifier so that only its release policy's output leaves the server (Stingy Teacher:
the top-N logits per image). v1 is a simple JSON/multipart API; v2 follows the Open Inference Protocol."""

# Bodies parsed by the routes themselves (size limits, multipart, binary tensors), documented by reference.
REQUEST_MODELS = (PredictRequest, InferenceRequest)
# The inference endpoints, served by app.fastpath (their FastAPI routes document them).
HOT_ENDPOINTS = (v1.predict, v2.infer)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: Service = app.state.service
    await service.start()
    if service.is_worker:
        # A worker takes connections from the shared port only once warmed up: while it warms up, the workers
        # already serving answer, instead of this one answering 503 not_ready.
        await service.wait_ready()
    try:
        yield
    finally:
        await service.stop()


def create_app(settings: ServeSettings, metrics_dir: str | None = None) -> FastAPI:
    """A FastAPI app serving ``settings.checkpoint``; the model loads when the app's lifespan starts.
    ``metrics_dir``: in a worker of ``--workers N``, where ``/metrics`` sums every worker's metrics."""
    service = Service(settings, metrics_dir)
    app = FastAPI(title="stingy-teacher", version=v2.server_version(), description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    install_error_handlers(app)
    for router in (ops.router, v1.router, v2.router):
        app.include_router(router)
    hot = [route for router in (v1.router, v2.router) for route in router.routes
           if isinstance(route, APIRoute) and route.endpoint in HOT_ENDPOINTS]
    app.add_middleware(FastPathMiddleware, routes=hot)  # innermost: inside the body limit, metrics and access log
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(ObservabilityMiddleware, metrics=service.metrics, access_log=service.access_log)  # outermost
    app.openapi = _openapi_with_request_models(app)  # type: ignore[method-assign]
    return app


def _openapi_with_request_models(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's OpenAPI document plus the request-body schemas that the routes reference."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, schemas = models_json_schema([(model, "validation") for model in REQUEST_MODELS],
                                            ref_template="#/components/schemas/{model}")
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas.get("$defs", {}))
            app.openapi_schema = document
        return app.openapi_schema

    return openapi
