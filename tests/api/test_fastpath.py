"""app.fastpath serves the inference routes without FastAPI's per-request machinery; the API suite checks that
answers, errors, metrics and the access log are unchanged through it. Here: its guard."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

from app.fastpath import FastPathMiddleware
from app.routes import v2


def test_the_fast_path_refuses_an_inference_route_with_a_dependency_it_would_skip() -> None:
    """app.fastpath calls the inference endpoints itself: a dependency added to one of them would silently be
    skipped, so building the app refuses it."""

    def extra_check() -> None:
        return None

    app = FastAPI()
    app.post("/v2/models/{name}/infer", dependencies=[Depends(extra_check)])(v2.infer)
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    with pytest.raises(TypeError, match="the fast path serves POST endpoints"):
        FastPathMiddleware(app, routes)
    FastPathMiddleware(app, [route for route in v2.router.routes if isinstance(route, APIRoute) and route.endpoint is v2.infer])
