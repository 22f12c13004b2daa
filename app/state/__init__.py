"""Where per-key budgets and rate limits live, shared by every server process of a deployment.

``open_state(url, sqlite_path)`` opens the store a ``--state`` setting names: ``sqlite`` (the default: the
SQLite file ``sqlite_path``, shared by the processes of one machine) or a Redis URL (``redis://host:port/db``,
``rediss://``, ``unix://``), shared by processes anywhere.
"""

from __future__ import annotations

from pathlib import Path

from app.state.base import Reservation, StateStore, TokenBucket

SQLITE = "sqlite"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

__all__ = ["REDIS_SCHEMES", "SQLITE", "Reservation", "StateStore", "TokenBucket", "check_state_url", "open_state"]


def check_state_url(url: str) -> str:
    """``url`` if it names a store; ``ValueError`` saying what is accepted otherwise."""
    if url != SQLITE and not url.startswith(REDIS_SCHEMES):
        raise ValueError("state must be 'sqlite' or a Redis URL: redis://host:port/db, rediss://... or unix://...")
    return url


def open_state(url: str, sqlite_path: Path) -> StateStore:
    """The store named by ``url`` (see :func:`check_state_url`); a SQLite file is created if missing, a Redis
    server is not contacted until the first call."""
    if check_state_url(url) == SQLITE:
        from app.state.sqlite_store import SqliteStore

        return SqliteStore(sqlite_path)
    from app.state.redis_store import RedisStore  # imports the redis client only when it is used

    return RedisStore(url)
