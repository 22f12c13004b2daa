"""ASGI middleware: the request-body size limit, and per-request metrics and access log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access_log import AccessLog
from app.errors import PayloadTooLarge, RequestTimeout
from app.metrics import ServiceMetrics

UNMATCHED_ROUTE = "unmatched"


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413: at once when ``Content-Length`` says so, otherwise as soon
    as the streamed body passes the limit (the route reading it gets :class:`PayloadTooLarge`). A body that
    has not arrived whole ``timeout_s`` seconds after the request began gets 408 and the connection is
    closed (:class:`RequestTimeout`), so a client sending a byte at a time holds nothing for longer."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = PayloadTooLarge(self._message(f"{declared} bytes")).response()
            await response(scope, receive, send)
            return
        received, complete = 0, False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # e.g. waiting for a disconnect while the response streams: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - asyncio.get_running_loop().time(), 0.0))
            except TimeoutError:
                raise RequestTimeout(f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._message("the streamed body"))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: str) -> str:
        return f"request body too large: {size} exceeds the limit of {self.max_bytes} bytes"


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    return int(value) if value is not None and value.isdigit() else None


class ObservabilityMiddleware:
    """Record every HTTP request in the metrics and the access log once its response has been sent.

    Routes report the caller's key id and image count through ``request.state.key_id`` / ``.images``.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, access_log: AccessLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # an exception before the response started becomes a 500 further out

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            seconds = time.perf_counter() - began
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            state: dict[str, Any] = scope.get("state") or {}
            self.metrics.observe_request(route, scope["method"], status, seconds)
            self.access_log.write(method=scope["method"], route=route, status=status, key=state.get("key_id"),
                                  images=int(state.get("images", 0)), latency_s=seconds)
