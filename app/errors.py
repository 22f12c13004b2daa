"""Every error the service answers with, and the handlers that render them.

Each error is JSON ``{"error": message, "code": short_code}`` (``{"error": ...}`` is what the Open Inference
Protocol asks for; ``code`` is for programs). Client mistakes are 4xx with a message naming the field;
an unexpected fault is a 500 with a generic message (the traceback goes to the server log, never to the client).
Messages never carry model outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

# Short codes for the HTTP errors the framework itself raises (unknown route, wrong method, bad form).
_HTTP_CODES = {400: "invalid_input", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "invalid_input", 422: "invalid_input"}


class ServiceError(Exception):
    """An error answered as ``{"error": message, "code": code}`` with ``status`` and extra ``headers``."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.code, self.headers)


class InvalidInput(ServiceError):
    """A malformed request; the message names the offending field (400)."""

    status, code = 400, "invalid_input"


class PayloadTooLarge(ServiceError):
    """The body, an image or the number of images exceeds a configured limit (413)."""

    status, code = 413, "payload_too_large"


class RequestTimeout(ServiceError):
    """The request body did not arrive within the body deadline (408); the connection is closed."""

    status, code = 408, "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class Unauthorized(ServiceError):
    """A missing or unknown API key (401)."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    """A route this server's configuration turns off for every caller (403)."""

    status, code = 403, "forbidden"


class BudgetExhausted(ServiceError):
    """The request's images exceed what is left of the key's query budget (403); nothing was counted."""

    status, code = 403, "budget_exhausted"

    def __init__(self, used: int, limit: int, requested: int) -> None:
        super().__init__(f"query budget exhausted: {used} of {limit} images used, this request needs {requested}")


class RateLimited(ServiceError):
    """The key's token bucket is empty (429); ``Retry-After`` says in how many whole seconds to retry."""

    status, code = 429, "rate_limited"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"rate limit exceeded; retry in {retry_after_s} s", headers={"Retry-After": str(retry_after_s)})


class NotFound(ServiceError):
    """An unknown model name or version (404)."""

    status, code = 404, "not_found"


class NotReady(ServiceError):
    """The model is still loading or warming up (503)."""

    status, code = 503, "not_ready"


class Overloaded(ServiceError):
    """The batching queue is full (503, load shedding): refused at once, before the body is read or the
    budget touched; ``Retry-After`` says in how many whole seconds to retry."""

    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class StateUnavailable(ServiceError):
    """The store of budgets and rate limits (SQLite file or Redis) cannot be reached (503, ``Retry-After: 1``);
    nothing was counted for the request."""

    status, code = 503, "state_unavailable"

    def __init__(self, store: str) -> None:
        super().__init__(f"the budget and rate-limit store ({store}) is unavailable; retry shortly", headers={"Retry-After": "1"})
        self.args = (store,)  # what pickling (another process) rebuilds it from


def error_response(status: int, message: str, code: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one shape of every error body."""
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=dict(headers or {}))


def describe_validation_errors(errors: Sequence[Mapping[str, Any]], prefix: tuple[str | int, ...] = ()) -> str:
    """One line naming each invalid field of a pydantic error list, e.g. ``inputs[0].shape: Field required``."""
    parts = []
    for error in errors[:5]:
        location = _format_location((*prefix, *error.get("loc", ())))
        # a validator's own ValueError reads better without pydantic's "Value error, " in front
        message = str(error["ctx"]["error"]) if error.get("type") == "value_error" and "error" in error.get("ctx", {}) else error.get("msg", "invalid")
        parts.append(f"{location}: {message}" if location else str(message))
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more")
    return "; ".join(parts)


def invalid_input_from(error: ValidationError) -> InvalidInput:
    """A pydantic validation error of a request body as a 400 naming the fields."""
    return InvalidInput(describe_validation_errors(error.errors(include_input=False, include_url=False)))


def _format_location(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        if part in ("body", "query", "path", "header") and not text:
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def install_error_handlers(app: FastAPI) -> None:
    """Render :class:`ServiceError`, framework HTTP errors, parameter validation errors and unexpected faults."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "request failed"
        return error_response(error.status_code, message, _HTTP_CODES.get(error.status_code, "error"), error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, describe_validation_errors(list(error.errors())), "invalid_input")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises the exception after sending this, so the server logs its traceback.
        return error_response(500, "internal server error", "internal")
