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

from app.errors import Forbidden, Unauthorized
from app.security import KeyRing
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
    return await decode(service.state is None, _authenticate_and_limit, request, service)


def _authenticate_and_limit(request: Request, service: Service) -> str:
    key_id = _authenticate(service.keys, request, service)
    request.state.key_id = key_id
    service.limit_rate(key_id)
    return key_id


KeyId = Annotated[str, Depends(caller)]


async def metrics_reader(request: Request, service: ServiceDep) -> None:
    """``/metrics`` takes only the metrics key (``STINGY_METRICS_KEY``; 401 without it, failures rate limited
    like API keys). A server with API keys but no metrics key refuses ``/metrics`` to everyone (403); a server
    without keys, open to everyone, serves it openly."""
    if service.metrics_keys is not None:
        await decode(service.state is None, _authenticate, service.metrics_keys, request, service)
    elif service.keys.enabled:
        raise Forbidden("/metrics is off: this server has API keys but no metrics key; set STINGY_METRICS_KEY and scrape with it")


def _authenticate(ring: KeyRing, request: Request, service: Service) -> str:
    """The key id ``ring`` gives the request's key; a failure also counts against the client's address."""
    try:
        return ring.authenticate(request.headers)
    except Unauthorized:
        service.limit_auth_failures(request.client.host if request.client else "unknown")
        raise


def budget_headers(remaining: int | None) -> dict[str, str]:
    """``X-Budget-Remaining`` (images) when the key has a budget."""
    return {} if remaining is None else {"X-Budget-Remaining": str(remaining)}


def decodes_inline(body_bytes: int) -> bool:
    """Whether a JSON or binary body of ``body_bytes`` is decoded on the event loop: under
    :data:`INLINE_DECODE_BYTES` decoding takes tens of microseconds, less than a hand-off to a worker thread."""
    return body_bytes < INLINE_DECODE_BYTES


async def decode(inline: bool, decoder: Callable[..., T], *args: object) -> T:
    """``decoder(*args)``: on the event loop when ``inline``, else in the thread pool (so that a large body,
    or a call to the state store, does not stall the other requests)."""
    if inline:
        return decoder(*args)
    return await run_in_threadpool(decoder, *args)
