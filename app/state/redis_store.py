"""Budgets and token buckets in Redis, for server processes on one or several machines.

Each operation is one Lua script, which Redis runs atomically (no other command interleaves), so "count the
images if they fit" and "refill the bucket, take a token" are single steps for every process. Keys live
under ``stingy:`` in the URL's database: ``stingy:budget:{key id}`` (an integer), ``stingy:bucket:{name}:{key}``
(a hash that expires once the bucket has refilled) and ``stingy:reservation:{marker}``.

Exactly once: a reservation writes a marker (expiring after ``marker_ttl_s``) holding its image count, in the
same script. Reserving again under the same marker counts nothing more, so a retried call (a reconnect after
a dropped connection) is safe. A reservation whose reply never arrived (its request was not served) is given
back at this process's next call once Redis answers: one script deletes the marker and subtracts its count,
so if Redis had counted it the images return to the key, once; if not, nothing happens. Budgets survive a Redis restart only if Redis persists its data (``appendonly yes`` with
``appendfsync always``; see docs/serving.md).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.errors import BudgetExhausted, StateUnavailable
from app.state.base import Reservation, StateStore, TokenBucket, rate_limited

PREFIX = "stingy:"
logger = logging.getLogger("stingy.state")
T = TypeVar("T")

# KEYS: budget counter, reservation marker. ARGV: images, limit, marker ttl (ms).
# Returns {1, used} when counted (now or earlier under this marker), {0, used} when the images do not fit.
RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then return {1, used} end
local images = tonumber(ARGV[1])
if used + images > tonumber(ARGV[2]) then return {0, used} end
used = redis.call('INCRBY', KEYS[1], images)
redis.call('SET', KEYS[2], images, 'PX', ARGV[3])
return {1, used}
"""

# KEYS: budget counter, reservation marker. Subtracts the marker's images once (never below 0); returns them.
GIVE_BACK = """
local images = redis.call('GET', KEYS[2])
if not images then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('DECRBY', KEYS[1], images) < 0 then redis.call('SET', KEYS[1], 0) end
return tonumber(images)
"""

# KEYS: bucket hash. ARGV: rate (tokens/s), burst. The clock is the Redis server's, the same for every
# process. Same equations as app.state.base.TokenBucket.take; returns the wait in seconds ("0" = granted).
TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(now - updated, 0) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'updated', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1)
return string.format('%.17g', wait)
"""


class RedisStore(StateStore):
    """The store in the Redis server at ``url`` (``redis://[user:password@]host:port/db``, ``rediss://`` for
    TLS, ``unix:///path.sock?db=N``).

    A call that gets no answer within ``timeout_s`` (or finds Redis down) is retried twice on a fresh
    connection, then raises :class:`app.errors.StateUnavailable`.
    """

    kind = "Redis"

    def __init__(self, url: str, *, timeout_s: float = 2.0, marker_ttl_s: float = 300.0) -> None:
        super().__init__()
        self._pending: list[Reservation] = []  # reservations whose outcome is unknown, to give back
        self._pending_lock = threading.Lock()
        self._marker_ttl_ms = int(marker_ttl_s * 1000)
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), retries=2))
        self._reserve_script = self._redis.register_script(RESERVE)
        self._give_back_script = self._redis.register_script(GIVE_BACK)
        self._take_script = self._redis.register_script(TAKE)

    def reserve(self, key_id: str, images: int, limit: int) -> Reservation:
        self._settle()
        marker = os.urandom(12).hex()
        try:
            granted, used = self._call(self._reserve_script, keys=[_budget(key_id), _marker(marker)],
                                       args=[images, limit, self._marker_ttl_ms])
        except BaseException:
            self._defer(Reservation(key_id, images, 0, marker))  # Redis may have counted it before the reply was lost
            raise
        if not granted:
            raise BudgetExhausted(int(used), limit, images)
        return Reservation(key_id, images, limit - int(used), marker)

    def used(self, key_id: str) -> int:
        self._settle()
        return int(self._call(self._redis.get, _budget(key_id)) or 0)

    def take(self, bucket: TokenBucket, key: str) -> None:
        wait = float(self._call(self._take_script, keys=[f"{PREFIX}bucket:{bucket.name}:{key}"], args=[bucket.rate, bucket.burst]))
        if wait > 0:
            raise rate_limited(wait)

    def close(self) -> None:
        """Give back what is pending if Redis answers (a warning says what could not be), then disconnect."""
        self._settle()
        if self._pending:
            logger.warning("Redis: %d reservations (%d images) whose requests were not served could not be given back "
                           "before closing", len(self._pending), sum(r.images for r in self._pending))
        self._redis.close()

    @property
    def pending(self) -> int:
        """Reservations waiting to be given back once Redis answers."""
        return len(self._pending)

    def _defer(self, reservation: Reservation) -> None:
        with self._pending_lock:
            self._pending.append(reservation)

    def _settle(self) -> None:
        """Give back the deferred reservations; stops at the first that Redis does not take."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for position, reservation in enumerate(pending):
            try:
                images = int(self._call(self._give_back_script, keys=[_budget(reservation.key_id), _marker(reservation.marker)]))
            except StateUnavailable:
                with self._pending_lock:
                    self._pending[:0] = pending[position:]
                return
            if images:
                logger.warning("Redis: gave back %d images counted for key %r in a request that was not served",
                               images, reservation.key_id)

    def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            result = function(*args, **kwargs)
        except redis.RedisError as error:  # down, loading its data after a restart, out of memory, timed out
            raise self._unavailable(error) from error
        self._answered()
        return result


def _budget(key_id: str) -> str:
    return f"{PREFIX}budget:{key_id}"


def _marker(marker: str) -> str:
    return f"{PREFIX}reservation:{marker}"
