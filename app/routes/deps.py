"""FastAPI dependencies shared by the model routes: the service, the caller's key id (auth and rate
limit), the budget header, and where a body is decoded.

The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
hand-off per request even where there is nothing to do. What blocks (the state store's token buckets, in
SQLite or Redis) is handed to the thread pool here, only when there is a state store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from app.errors import Unauthorized
from app.service import Service

T = TypeVar("T")

INLINE_DECODE_BYTES = 64 * 1024  # e.g. 17 Fashion-MNIST images as JSON numbers


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def caller(request: Request, service: ServiceDep) -> str:
    """Authenticate the request (401 unless a configured key is given) and take a rate-limit token (429).

    Failed authentications are rate limited per client address too (429 instead of 401 once a client
    fails faster than ``auth_failure_rate``). The key id is recorded for the access log; open servers give
    ``anonymous``. Without a state store (no keys, no rate limit, no budget) nothing blocks, and nothing
    leaves the event loop.
    """
    if service.state is None:
        return _authenticate_and_limit(request, service)
    return await run_in_threadpool(_authenticate_and_limit, request, service)


def _authenticate_and_limit(request: Request, service: Service) -> str:
    try:
        key_id = service.keys.authenticate(request.headers)
    except Unauthorized:
        service.limit_auth_failures(request.client.host if request.client else "unknown")
        raise
    request.state.key_id = key_id
    service.limit_rate(key_id)
    return key_id


KeyId = Annotated[str, Depends(caller)]


def budget_headers(remaining: int | None) -> dict[str, str]:
    """``X-Budget-Remaining`` (images) when the key has a budget."""
    return {} if remaining is None else {"X-Budget-Remaining": str(remaining)}


def decodes_inline(body_bytes: int) -> bool:
    """Whether a JSON or binary body of ``body_bytes`` is decoded on the event loop: under
    :data:`INLINE_DECODE_BYTES` decoding takes tens of microseconds, less than a hand-off to a worker thread."""
    return body_bytes < INLINE_DECODE_BYTES


async def decode(inline: bool, decoder: Callable[..., T], *args: object) -> T:
    """``decoder(*args)``: on the event loop when ``inline``, else in the thread pool (so that a large body
    does not stall the other requests)."""
    if inline:
        return decoder(*args)
    return await run_in_threadpool(decoder, *args)
