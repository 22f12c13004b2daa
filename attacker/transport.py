"""The HTTP side of the attack client: one base URL over httpx, at most ``concurrency`` requests on the
wire, and what to do with each failure (it knows nothing of v1 or v2; :mod:`attacker.wire` does).

- While discovering (``discovering=True``) a refused connection fails at once with :class:`ServerUnavailable`
  (a wrong URL or a server that is not running).
- Connection errors, timeouts and 5xx answers are retried with exponential backoff and full jitter
  (``uniform(0, min(max_delay, base_delay * 2**(n - 1)))`` before the ``n``-th retry), at most
  ``RetryPolicy.attempts`` tries in all, then :class:`ServerUnavailable`.
- 429 waits the ``Retry-After`` seconds (plus up to ``base_delay`` of jitter) and tries again, at most
  ``RetryPolicy.rate_limit_attempts`` times; a ``Retry-After`` above ``max_retry_after`` stops at once
  with :class:`RateLimited`.
- 403 ``budget_exhausted`` raises :class:`BudgetExhausted`, 413 :class:`PayloadTooLarge`, 401
  :class:`Unauthorized`; any other 4xx :class:`ServerRefused`. None of these is retried.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from attacker.errors import BudgetExhausted, PayloadTooLarge, ProtocolError, RateLimited, ServerRefused, ServerUnavailable, Unauthorized


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``attempts`` counts every try (1 = no retry) for connection errors and 5xx."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    rate_limit_attempts: int = 100
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.rate_limit_attempts < 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry attempts must be >= 1 and delays >= 0")

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Full-jitter delay before the retry that follows the ``failures``-th failure."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (failures - 1)))


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0


class Transport:
    """Requests to one server with retries, rate-limit waits and the budget header (``budget_remaining``: the
    last ``X-Budget-Remaining`` seen). ``transport``, ``sleep`` and ``rng`` exist for tests."""

    def __init__(
        self, url: str, *, api_key: str | None, timeout: float, concurrency: int, retry: RetryPolicy,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, rng: random.Random | None = None,
    ) -> None:
        self.url, self.retry = url, retry
        self.stats = ClientStats()
        self.budget_remaining: int | None = None
        self._sleep, self._rng = sleep, rng or random.Random()
        self._slots = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=url, headers=headers, transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def get_optional(self, path: str) -> Any | None:
        """The JSON of ``GET path`` while discovering, or ``None`` when the server answers 404 there."""
        try:
            return json_of(await self.request("GET", path, discovering=True))
        except ServerRefused as refused:
            if refused.status == 404:
                return None
            raise

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, discovering: bool = False) -> httpx.Response:
        """A 2xx answer to ``method path`` (JSON ``body``), after the retries and waits above."""
        failures = rate_limited = 0
        while True:
            try:
                async with self._slots:
                    self.stats.requests += 1
                    response = await self._http.request(method, path, json=body)
            except httpx.TransportError as error:
                failures += 1
                reason = f"{type(error).__name__}: {error}".rstrip(": ")
                if discovering and isinstance(error, httpx.ConnectError):  # no server there: no retry
                    raise ServerUnavailable(f"cannot connect to {self.url} ({reason}): is the server running, and is "
                                            "the URL right?") from None
                await self._retry_or_raise(failures, f"{method} {self.url}{path} failed ({reason})")
                continue
            status = response.status_code
            if status == 429:
                rate_limited += 1
                await self._wait_rate_limit(response, rate_limited, f"{method} {self.url}{path}")
                continue
            if status >= 500:
                failures += 1
                code, message = _error_of(response)
                await self._retry_or_raise(failures, f"{method} {self.url}{path} answered HTTP {status} {code}: {message}")
                continue
            if status >= 400:
                raise _refusal(response)
            self._note_budget(response)
            return response
    async def _retry_or_raise(self, failures: int, what: str) -> None:
        if failures >= self.retry.attempts:
            raise ServerUnavailable(f"{what}; gave up after {failures} attempts")
        self.stats.retries += 1
        await self._sleep(self.retry.backoff(failures, self._rng))

    async def _wait_rate_limit(self, response: httpx.Response, count: int, what: str) -> None:
        self.stats.rate_limited += 1
        wait = _retry_after(response)
        if wait is None:
            wait = self.retry.backoff(count, self._rng)
        if wait > self.retry.max_retry_after:
            raise RateLimited(f"{what}: rate limited with Retry-After {wait:g}s (more than {self.retry.max_retry_after:g}s)")
        if count > self.retry.rate_limit_attempts:
            raise RateLimited(f"{what}: still rate limited after {count - 1} waits")
        await self._sleep(wait + self._rng.uniform(0.0, self.retry.base_delay))

    def _note_budget(self, response: httpx.Response) -> None:
        value = response.headers.get("X-Budget-Remaining")
        if value is not None and value.strip().isdigit():
            self.budget_remaining = int(value)


def json_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as error:
        raise ProtocolError(f"{response.request.method} {response.request.url} did not answer JSON ({error})") from error


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of an error answer: the wire contract's ``{"error", "code"}``, else the body text."""
    try:
        document = response.json()
    except ValueError:
        return "error", response.text.strip()[:200] or response.reason_phrase
    if isinstance(document, dict):
        message = document.get("error", document.get("detail", document))
        return str(document.get("code", "error")), str(message)[:300]
    return "error", str(document)[:300]


def _refusal(response: httpx.Response) -> ServerRefused:
    code, message = _error_of(response)
    status = response.status_code
    if status == 401:
        return Unauthorized(status, code, message)
    if status == 403 and code == "budget_exhausted":
        return BudgetExhausted(status, code, message)
    if status == 413:
        return PayloadTooLarge(status, code, message)
    return ServerRefused(status, code, message)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None
