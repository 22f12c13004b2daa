"""The inference routes without FastAPI's per-request machinery.

Under load, most of the event loop's time per one-image request went to FastAPI and Starlette around the
endpoint (route matching, dependency solving, the exception and exit-stack wrappers), not to the endpoint.
:class:`FastPathMiddleware` sits inside the app's own middleware (body limit, metrics, access log) and calls
the same endpoint functions directly: it matches ``POST`` to the given routes' paths, authenticates with
:func:`app.routes.deps.caller` (the routes' only dependency, checked when the app is built), calls the
endpoint, and renders a :class:`app.errors.ServiceError` as the error handler does. Anything else, and every
other route, goes on to FastAPI; the routes stay declared there for OpenAPI, and unexpected errors still
become the generic 500 of :func:`app.errors.install_error_handlers`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceError
from app.routes.deps import caller, get_service

INJECTED = {"request", "service", "key"}


class FastPathMiddleware:
    """Serve ``POST`` to ``routes`` by calling their endpoints with ``request``, ``service``, ``key`` and the
    path parameters they name."""

    def __init__(self, app: ASGIApp, routes: Sequence[APIRoute]) -> None:
        self.app = app
        self.routes = list(routes)
        for route in self.routes:
            dependencies = {dependency.call for dependency in route.dependant.dependencies}
            parameters = inspect.signature(route.endpoint).parameters
            unfilled = [name for name, parameter in parameters.items() if name not in INJECTED
                        and name not in route.param_convertors and parameter.default is inspect.Parameter.empty]
            if "POST" not in (route.methods or ()) or not dependencies <= {caller, get_service} or unfilled \
                    or not INJECTED <= set(parameters):
                raise TypeError(f"{route.path}: the fast path serves POST endpoints taking {sorted(INJECTED)} and path "
                                f"parameters; this one takes {list(parameters)} with dependencies {dependencies}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match = route.path_regex.match(scope["path"])
                if match is not None:
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: APIRoute, path_params: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"], scope["path_params"] = route, path_params
        request = Request(scope, receive)
        service = scope["app"].state.service
        try:
            key = await caller(request, service)
            response = await route.endpoint(request=request, service=service, key=key, **path_params)
        except ServiceError as error:
            response = error.response()
        await response(scope, receive, send)
