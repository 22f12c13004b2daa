"""The contract of a state store: per-key query budgets and token-bucket rate limits that every server
process of a deployment shares, so that both stay exact however many processes serve.

Two stores implement it: :class:`app.state.sqlite_store.SqliteStore` (one SQLite file, the embedded
default) and :class:`app.state.redis_store.RedisStore` (a Redis server, for processes on several machines).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

from app.errors import RateLimited, StateUnavailable

logger = logging.getLogger("stingy.state")


@dataclass(frozen=True)
class TokenBucket:
    """A token-bucket rate limit named ``name``: ``rate`` tokens per second, at most ``burst`` in the bucket;
    a request takes one. A key never seen (or whose bucket has refilled) starts with a full bucket.

    With ``t`` tokens at time ``u``, at time ``now`` the bucket holds ``min(burst, t + (now - u) * rate)``.
    """

    name: str
    rate: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"token bucket {self.name!r}: rate must be positive and burst at least 1")

    @classmethod
    def per_second(cls, name: str, rate: float, burst: int | None = None) -> TokenBucket:
        """A bucket of ``rate`` tokens per second; ``burst`` defaults to ``ceil(rate)`` (at least 1)."""
        return cls(name, rate, burst if burst is not None else max(1, math.ceil(rate)))

    def take(self, tokens: float, elapsed_s: float) -> tuple[float, float]:
        """Refill ``tokens`` for ``elapsed_s`` seconds (a clock going back counts as 0) and take one token.

        Returns ``(tokens left, wait)``: ``wait`` is 0 when the token was granted, else the seconds until one
        is back (nothing was taken).
        """
        tokens = min(float(self.burst), tokens + max(elapsed_s, 0.0) * self.rate)
        if tokens >= 1.0:
            return tokens - 1.0, 0.0
        return tokens, (1.0 - tokens) / self.rate

    def seconds_to_full(self, tokens: float) -> float:
        """How long a bucket holding ``tokens`` takes to refill (after that it can be forgotten)."""
        return (self.burst - tokens) / self.rate


def rate_limited(wait_s: float) -> RateLimited:
    """The 429 for a bucket that is ``wait_s`` seconds away from its next token (``Retry-After`` in whole seconds)."""
    return RateLimited(max(1, math.ceil(wait_s)))


@dataclass(frozen=True)
class Reservation:
    """Images counted against a key's budget by :meth:`StateStore.reserve`: ``remaining`` is what the key has
    left after them; ``marker`` identifies this reservation (Redis gives back, at most once, one whose reply
    was lost)."""

    key_id: str
    images: int
    remaining: int
    marker: str


class StateStore(ABC):
    """Budgets and rate limits shared by every process that opens the same store.

    Every method is thread-safe and blocking (call it off the event loop). A store that cannot be reached
    raises :class:`app.errors.StateUnavailable` (503) and counts nothing for that call (where the outcome of a
    call is unknown, the store sees to it that nothing stays counted twice or lost).
    """

    kind = "state store"  # names the store in errors; never a path or address (clients see it)

    def __init__(self) -> None:
        self._reachable = True

    @abstractmethod
    def reserve(self, key_id: str, images: int, limit: int) -> Reservation:
        """Count ``images`` against ``key_id`` if ``used + images <= limit``, atomically across processes;
        raises :class:`app.errors.BudgetExhausted` (counting nothing) when they do not fit."""

    @abstractmethod
    def used(self, key_id: str) -> int:
        """Images counted against ``key_id`` so far (0 for a key never seen)."""

    @abstractmethod
    def take(self, bucket: TokenBucket, key: str) -> None:
        """Take one token from ``key``'s bucket; raises :class:`app.errors.RateLimited` when it is empty."""

    @abstractmethod
    def close(self) -> None:
        """Close the connections."""

    def _unavailable(self, error: Exception) -> StateUnavailable:
        """The 503 for ``error``; the first failure after a success is logged (with details clients never see)."""
        if self._reachable:
            self._reachable = False
            logger.warning("%s unreachable (%s: %s); answering 503 until it is back", self.kind, type(error).__name__, error)
        return StateUnavailable(self.kind)

    def _answered(self) -> None:
        """Record a successful call (logs the recovery after a failure)."""
        if not self._reachable:
            self._reachable = True
            logger.warning("%s reachable again", self.kind)
