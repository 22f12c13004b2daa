"""Budgets and token buckets in one SQLite file: the embedded default store.

Every change is one ``BEGIN IMMEDIATE`` transaction, which takes the file's single write lock, so the
processes and threads that share the file (``stingy-serve --workers N`` on one machine, or servers sharing a
local volume) see one order of updates: a budget can never be overspent and a token never taken twice.
Writers queue on an ``flock`` of ``<file>-writer.lock`` before they begin: the kernel wakes the next writer as
soon as the lock is free, where SQLite's own busy handler would poll with sleeps of up to 100 ms. Budget
commits are durable (``synchronous=FULL``: each one reaches the disk before the request is served); token
buckets are written with ``synchronous=NORMAL`` (a power cut may refill some buckets, which is harmless).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.errors import BudgetExhausted
from app.state.base import Reservation, StateStore, TokenBucket, rate_limited

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS budget (key_id TEXT PRIMARY KEY, used INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS token_bucket (bucket TEXT NOT NULL, key TEXT NOT NULL, tokens REAL NOT NULL, "
    "updated REAL NOT NULL, full_at REAL NOT NULL, PRIMARY KEY (bucket, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS token_bucket_full_at ON token_bucket (full_at)",
)


class SqliteStore(StateStore):
    """Budgets and token buckets in the SQLite file ``path`` (created if missing).

    Bucket times come from ``clock`` (wall-clock seconds, shared by the processes of one machine). Buckets
    that have refilled are deleted every ``prune_every`` new buckets, so the table holds only the keys (or
    client addresses) seen within their bucket's refill time.
    """

    kind = "SQLite"

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, prune_every: int = 1000) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock = clock
        self._prune_every = prune_every
        self._new_buckets = 0
        self._budget_db = _connect(path, synchronous="FULL")
        self._bucket_db = _connect(path, synchronous="NORMAL")
        self._budget_lock, self._bucket_lock = threading.Lock(), threading.Lock()
        writer_lock = path.with_name(path.name + "-writer.lock")
        self._writer_locks = {id(db): open(writer_lock, "a") for db in (self._budget_db, self._bucket_db)}  # one each: flock is per open file
        with self._budget_lock, self._transaction(self._budget_db):
            for statement in SCHEMA:
                self._budget_db.execute(statement)

    def reserve(self, key_id: str, images: int, limit: int) -> Reservation:
        """A transaction that fails rolls back whole: a reservation that raised was never counted."""
        with self._budget_lock, self._transaction(self._budget_db):
            self._budget_db.execute("INSERT OR IGNORE INTO budget (key_id, used) VALUES (?, 0)", (key_id,))
            updated = self._budget_db.execute(
                "UPDATE budget SET used = used + ? WHERE key_id = ? AND used + ? <= ?", (images, key_id, images, limit)
            ).rowcount
            used = self._select_used(key_id)
        if not updated:
            raise BudgetExhausted(used, limit, images)
        return Reservation(key_id, images, limit - used, marker=os.urandom(8).hex())

    def used(self, key_id: str) -> int:
        with self._budget_lock, self._unavailable_on_error():
            return self._select_used(key_id)

    def take(self, bucket: TokenBucket, key: str) -> None:
        with self._bucket_lock, self._transaction(self._bucket_db):
            now = self._clock()
            row = self._bucket_db.execute("SELECT tokens, updated FROM token_bucket WHERE bucket = ? AND key = ?",
                                          (bucket.name, key)).fetchone()
            tokens, wait = bucket.take(*((row[0], now - row[1]) if row else (float(bucket.burst), 0.0)))
            self._bucket_db.execute(
                "INSERT INTO token_bucket (bucket, key, tokens, updated, full_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (bucket, key) DO UPDATE SET tokens = excluded.tokens, updated = excluded.updated, full_at = excluded.full_at",
                (bucket.name, key, tokens, now, now + bucket.seconds_to_full(tokens)))
            if row is None:
                self._new_buckets += 1
                if self._new_buckets % self._prune_every == 0:
                    self._bucket_db.execute("DELETE FROM token_bucket WHERE full_at <= ?", (now,))
        if wait > 0:
            raise rate_limited(wait)

    def close(self) -> None:
        with self._budget_lock, self._bucket_lock:
            self._budget_db.close()
            self._bucket_db.close()
            for lock_file in self._writer_locks.values():
                lock_file.close()

    def _select_used(self, key_id: str) -> int:
        row = self._budget_db.execute("SELECT used FROM budget WHERE key_id = ?", (key_id,)).fetchone()
        return int(row[0]) if row else 0

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception) holding the writer lock; SQLite
        errors become 503."""
        writer_lock = self._writer_locks[id(db)]
        with self._unavailable_on_error():
            fcntl.flock(writer_lock, fcntl.LOCK_EX)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            finally:
                fcntl.flock(writer_lock, fcntl.LOCK_UN)

    @contextmanager
    def _unavailable_on_error(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:  # locked for longer than the busy timeout, disk full, file removed
            raise self._unavailable(error) from error
        self._answered()


def _connect(path: Path, *, synchronous: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, 30 s busy timeout."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db
