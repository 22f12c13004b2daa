"""API keys, per-key query budgets (SQLite) and per-key token-bucket rate limits.

Keys are kept only as SHA-256 digests; a key is known in logs and metrics by its *key id*: its name
(``name:secret`` entries) or ``key-`` and the first 8 hex digits of its digest, never the secret. With no
keys configured the service is open and every client shares the key id ``anonymous``.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from app.errors import BudgetExhausted, RateLimited, Unauthorized

ANONYMOUS = "anonymous"
UNAUTHENTICATED = "unauthenticated"  # the metrics label of refused failed authentications


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    """The accepted API keys, as ``sha256(secret) -> key id``."""

    def __init__(self, entries: Iterable[str]) -> None:
        """``entries``: ``name:secret`` or a bare secret each. Raises ``ValueError`` for an empty secret or a
        name used twice (the message never contains a secret)."""
        self._ids: dict[str, str] = {}
        for position, entry in enumerate(entries, 1):
            name, sep, secret = (part.strip() for part in entry.partition(":"))
            if not sep:
                name, secret = "", name
            digest = _digest(secret)
            key_id = name.strip() or f"key-{digest[:8]}"
            if not secret:
                raise ValueError(f"API key entry {position} has an empty secret")
            if key_id in self._ids.values() or digest in self._ids:
                raise ValueError(f"API key entry {position} ({key_id}) repeats a name or a secret")
            self._ids[digest] = key_id

    @classmethod
    def from_sources(cls, keys: Iterable[str], keys_file: Path | None) -> KeyRing:
        """Keys given directly plus the lines of ``keys_file`` (blank lines and ``#`` comments skipped)."""
        entries = list(keys)
        if keys_file is not None:
            lines = keys_file.read_text().splitlines()
            entries += [line for line in (raw.strip() for raw in lines) if line and not line.startswith("#")]
        return cls(entries)

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured (model routes then need one)."""
        return bool(self._ids)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._ids.values())

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """The key id for ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; raises :class:`Unauthorized`."""
        if not self._ids:
            return ANONYMOUS
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        secret = credentials.strip() if scheme.lower() == "bearer" else headers.get("x-api-key", "").strip()
        if not secret:
            raise Unauthorized("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
        key_id = self._ids.get(_digest(secret))
        if key_id is None:
            raise Unauthorized("invalid API key")
        return key_id


class BudgetStore:
    """How many images each key has queried, in SQLite, against one ``limit`` per key.

    A reservation is a single ``UPDATE ... WHERE used + n <= limit`` in its own transaction, so concurrent
    requests, threads and even processes sharing the file can never overspend; counts survive restarts.
    """

    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS budget (key_id TEXT PRIMARY KEY, used INTEGER NOT NULL DEFAULT 0)")

    def reserve(self, key_id: str, images: int) -> int:
        """Count ``images`` against ``key_id`` and return what is left; raises :class:`BudgetExhausted`
        (counting nothing) when they do not fit."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR IGNORE INTO budget (key_id, used) VALUES (?, 0)", (key_id,))
                updated = self._db.execute(
                    "UPDATE budget SET used = used + ? WHERE key_id = ? AND used + ? <= ?", (images, key_id, images, self.limit)
                ).rowcount
                used = self._used(key_id)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if not updated:
            raise BudgetExhausted(used, self.limit, images)
        return self.limit - used

    def refund(self, key_id: str, images: int) -> None:
        """Give back a reservation whose request failed on the server's side."""
        with self._lock:
            self._db.execute("UPDATE budget SET used = MAX(used - ?, 0) WHERE key_id = ?", (images, key_id))

    def used(self, key_id: str) -> int:
        with self._lock:
            return self._used(key_id)

    def remaining(self, key_id: str) -> int:
        return max(self.limit - self.used(key_id), 0)

    def _used(self, key_id: str) -> int:
        row = self._db.execute("SELECT used FROM budget WHERE key_id = ?", (key_id,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: ``rate`` tokens per second, at most ``burst``; a request costs one.

    At most ``max_keys`` buckets are kept (keys may be client addresses): when a new key would exceed that,
    the buckets that have refilled are dropped (a full bucket is what a new key gets anyway), then, if
    still too many, the least recently used one.
    """

    def __init__(self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if rate <= 0 or max_keys < 1:
            raise ValueError("rate must be positive and max_keys at least 1")
        self.rate = rate
        self.burst = burst if burst is not None else max(1, math.ceil(rate))
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key_id: str) -> None:
        """Take one token for ``key_id``; raises :class:`RateLimited` with the whole seconds until one is back."""
        with self._lock:
            now = self._clock()
            if key_id not in self._buckets and len(self._buckets) >= self.max_keys:
                self._make_room(now)
            bucket = self._buckets.setdefault(key_id, _Bucket(float(self.burst), now))
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / self.rate
        raise RateLimited(max(1, math.ceil(wait)))

    def _make_room(self, now: float) -> None:
        self._buckets = {key: b for key, b in self._buckets.items() if now - b.updated < (self.burst - b.tokens) / self.rate}
        if len(self._buckets) >= self.max_keys:
            del self._buckets[min(self._buckets, key=lambda key: self._buckets[key].updated)]
