"""uvicorn's HTTP protocol with a deadline for every request head, and the server config that selects it.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` seconds, but only once a response
has been sent, and any byte that arrives restarts that wait: a connection that never sends a request, or
sends its head a byte at a time, stays open for ever; and httptools (unlike h11) keeps every byte of an
unfinished head, so one endless header line fills the memory. Here a connection must deliver a complete
request head within ``header_timeout_s`` of opening and of each response, in at most ``max_header_bytes``;
past either, with no request in progress, the server closes it. (The body of a request has its own deadline:
:class:`app.middleware.BodyLimitMiddleware`.)

A request can be answered before its body has arrived (a wrong key, a full queue: refused before the body is
read). The rest of that body is not a request head: its bytes do not count against ``max_header_bytes``, and
the next head's wait starts when it has ended; it must end within ``header_timeout_s`` of the answer.

Both classes live at module level so that ``--workers`` can hand the config to its spawned processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadDeadlineProtocol(HttpToolsProtocol):  # type: ignore[misc]
    """uvicorn's httptools protocol that closes a connection whose request head has not arrived
    ``config.header_timeout_s`` seconds after it opened or after its last response (or after the end of the
    body of a request answered early), or has passed ``config.max_header_bytes`` without ending (checked per
    chunk read: at most one chunk more)."""

    _head_deadline: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _in_body = False  # between a request's head and the end of its body (answered or not)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        cycle, awaiting_head = self.cycle, self._awaiting_head()
        super().data_received(data)
        if self.cycle is not cycle:  # a request head ended in this chunk
            self._head_bytes = 0
        elif awaiting_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.config.max_header_bytes:
                self.transport.close()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._in_body = True

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        if self.cycle is not None and self._answered():  # answered before its body ended
            self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_bytes = 0
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        if not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self.config.header_timeout_s, self._head_overdue)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _answered(self) -> bool:
        """No request yet, or the last one has had its response (its body may still be arriving)."""
        return self.cycle is None or bool(self.cycle.response_complete)

    def _awaiting_head(self) -> bool:
        """No request in progress: none yet, or the last one answered and its body over."""
        return not self._in_body and self._answered()

    def _head_overdue(self) -> None:
        self._head_deadline = None
        if self._answered():  # the head never came, or the body of an answered request never ended
            self.transport.close()


class ServerConfig(uvicorn.Config):
    """``uvicorn.Config`` serving HTTP with :class:`HeadDeadlineProtocol`, its ``header_timeout_s`` and
    ``max_header_bytes``."""

    def __init__(self, app: Any, *, header_timeout_s: float, max_header_bytes: int, **options: Any) -> None:
        if header_timeout_s <= 0 or max_header_bytes < 1:
            raise ValueError(f"need header_timeout_s > 0 and max_header_bytes >= 1, got {header_timeout_s!r}, {max_header_bytes!r}")
        super().__init__(app, http=HeadDeadlineProtocol, **options)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
