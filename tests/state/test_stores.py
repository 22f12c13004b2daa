"""The state stores (SQLite and a real Redis), checked against one contract: a budget is spent exactly, never
beyond its limit and never below zero, from many threads and processes at once; token buckets refill at their
rate; an unreachable store answers 503 and loses nothing."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from app.errors import BudgetExhausted, RateLimited, StateUnavailable
from app.state import StateStore, TokenBucket, open_state
from app.state.redis_store import RedisStore
from app.state.sqlite_store import SqliteStore
from app.launch import RedisServer

OpenStore = Callable[[], StateStore]


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens another connection to one store (as another process would); every one opened is closed after the test."""
    url = "sqlite" if request.param == "sqlite" else request.getfixturevalue("redis_server").url
    opened: list[StateStore] = []

    def connect() -> StateStore:
        opened.append(open_state(url, tmp_path / "state.sqlite3"))
        return opened[-1]

    yield connect
    for store in opened:
        store.close()


def run_threads(work: Callable[[int], None], count: int) -> None:
    """``work(0)`` ... ``work(count - 1)`` in ``count`` threads at once; re-raises the first exception of any."""
    with ThreadPoolExecutor(count) as pool:
        for future in [pool.submit(work, i) for i in range(count)]:
            future.result(timeout=120)


# ---- budgets -------------------------------------------------------------------------------------------

def test_a_reservation_is_counted_whole_or_not_at_all(open_store: OpenStore) -> None:
    store = open_store()
    first = store.reserve("alice", 4, limit=10)
    assert (first.key_id, first.images, first.remaining) == ("alice", 4, 6)
    with pytest.raises(BudgetExhausted, match="4 of 10 images used, this request needs 7"):
        store.reserve("alice", 7, limit=10)
    assert store.reserve("alice", 6, limit=10).remaining == 0
    assert store.used("alice") == 10 and store.used("carol") == 0
    with pytest.raises(BudgetExhausted):
        store.reserve("alice", 1, limit=10)
    assert store.reserve("carol", 10, limit=10).remaining == 0


def test_another_connection_sees_the_same_counts(open_store: OpenStore) -> None:
    one, other = open_store(), open_store()
    one.reserve("alice", 3, limit=5)
    assert other.used("alice") == 3
    with pytest.raises(BudgetExhausted):
        other.reserve("alice", 3, limit=5)


def test_concurrent_spends_from_threads_are_exact(open_store: OpenStore) -> None:
    """8 threads on 2 connections reserve at once: every reservation that fits is granted, no more, and the
    count never exceeds the limit."""
    stores = [open_store(), open_store()]
    granted: list[int] = []
    seen: list[int] = []
    lock = threading.Lock()

    def spend(thread: int) -> None:
        store = stores[thread % 2]
        for attempt in range(40):
            try:
                reservation = store.reserve("k", 1 + attempt % 3, limit=100)
            except BudgetExhausted:
                continue
            with lock:
                granted.append(reservation.images)
                seen.append(store.used("k"))

    run_threads(spend, 8)
    assert stores[0].used("k") == sum(granted) and 98 <= sum(granted) <= 100
    assert max(seen) <= 100


def _spend_in_another_process(url: str, sqlite_path: Path, attempts: int, start: threading.Barrier) -> tuple[int, int]:
    """Runs in a spawned process: once every process is ready, ``attempts`` times reserve 1, 2, 3, 1, ... images
    of key ``k`` (limit 100) and take a token from its bucket of 40 (refilling once an hour); returns the images
    and the tokens granted."""
    store = open_state(url, sqlite_path)
    start.wait(timeout=120)
    images = tokens = 0
    for attempt in range(attempts):
        try:
            images += store.reserve("k", 1 + attempt % 3, limit=100).images
        except BudgetExhausted:
            pass
        try:
            store.take(TokenBucket("key", rate=1 / 3600, burst=40), "k")
            tokens += 1
        except RateLimited:
            pass
    store.close()
    return images, tokens


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_concurrent_spends_and_takes_from_processes_are_exact(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = "sqlite" if backend == "sqlite" else request.getfixturevalue("redis_server").url
    path = tmp_path / "state.sqlite3"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(3) as pool:
        start = manager.Barrier(3)
        granted = pool.starmap(_spend_in_another_process, [(url, path, 60, start)] * 3)
    images, tokens = (sum(column) for column in zip(*granted))
    assert tokens == 40  # 180 requests, a burst of 40
    store = open_state(url, path)
    try:
        assert store.used("k") == images and 98 <= images <= 100  # 180 requests of 1-3 images for 100
    finally:
        store.close()


# ---- token buckets -------------------------------------------------------------------------------------

def test_buckets_are_per_name_and_key_and_exact_across_connections(open_store: OpenStore) -> None:
    """A bucket of 40 that refills once an hour, emptied by 6 threads on 2 connections: exactly 40 granted."""
    stores = [open_store(), open_store()]
    bucket = TokenBucket("key", rate=1 / 3600, burst=40)
    granted: list[int] = []

    def hammer(thread: int) -> None:
        for _ in range(15):
            try:
                stores[thread % 2].take(bucket, "alice")
                granted.append(1)
            except RateLimited as error:
                assert error.headers["Retry-After"] == "3600"

    run_threads(hammer, 6)
    assert len(granted) == 40
    stores[0].take(bucket, "carol")  # another key, another bucket
    stores[0].take(TokenBucket("auth-failure", rate=1 / 3600, burst=1), "alice")  # another name, another bucket


def test_sqlite_bucket_refills_at_the_rate_up_to_the_burst(tmp_path: Path) -> None:
    now = [1000.0]
    store = SqliteStore(tmp_path / "state.sqlite3", clock=lambda: now[0])
    bucket = TokenBucket("key", rate=2.0, burst=3)
    for _ in range(3):
        store.take(bucket, "k")
    with pytest.raises(RateLimited) as error:
        store.take(bucket, "k")
    assert error.value.headers == {"Retry-After": "1"}
    now[0] += 0.5  # one token back
    store.take(bucket, "k")
    now[0] += 10.0  # refills to the burst, not beyond
    for _ in range(3):
        store.take(bucket, "k")
    with pytest.raises(RateLimited):
        store.take(bucket, "k")
    now[0] -= 100.0  # a clock that goes back refills nothing (and breaks nothing)
    with pytest.raises(RateLimited):
        store.take(bucket, "k")
    slow = TokenBucket.per_second("slow", 0.1)
    store.take(slow, "k")
    with pytest.raises(RateLimited) as error:
        store.take(slow, "k")
    assert error.value.headers == {"Retry-After": "10"}
    store.close()


def test_sqlite_forgets_buckets_that_have_refilled(tmp_path: Path) -> None:
    now = [0.0]
    store = SqliteStore(tmp_path / "state.sqlite3", clock=lambda: now[0], prune_every=2)
    bucket = TokenBucket("auth-failure", rate=1.0, burst=2)
    store.take(bucket, "a")
    store.take(bucket, "b")  # the second new bucket: pruning finds none refilled
    now[0] += 1.5  # a and b are full again
    store.take(bucket, "c")
    store.take(bucket, "d")  # pruned: a and b
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        assert sorted(row[0] for row in db.execute("SELECT key FROM token_bucket")) == ["c", "d"]
    store.close()


def test_redis_bucket_refills_at_the_rate_and_expires_when_full(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    bucket = TokenBucket("key", rate=4.0, burst=2)
    store.take(bucket, "k")
    store.take(bucket, "k")
    with pytest.raises(RateLimited) as error:
        store.take(bucket, "k")
    assert error.value.headers == {"Retry-After": "1"}
    with redis_server.client() as client:
        assert 0 < client.pttl("stingy:bucket:key:k") <= 501  # empty: full again in 2 / 4 s
    time.sleep(0.3)  # a token is back after 0.25 s
    store.take(bucket, "k")
    with pytest.raises(RateLimited):
        store.take(bucket, "k")
    store.close()


# ---- Redis down, replies lost --------------------------------------------------------------------------

def test_redis_down_answers_unavailable_and_counts_nothing(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_s=0.5)
    store.reserve("alice", 2, limit=10)
    redis_server.stop()
    for call in (lambda: store.reserve("alice", 1, limit=10), lambda: store.used("alice"),
                 lambda: store.take(TokenBucket("key", 1.0, 1), "alice")):
        with pytest.raises(StateUnavailable) as error:
            call()
        assert error.value.status == 503 and error.value.headers == {"Retry-After": "1"}
        assert "127.0.0.1" not in error.value.message
    assert store.pending == 1  # the failed reservation: Redis may have counted it
    redis_server.start()
    assert store.used("alice") == 2 and store.pending == 0  # it had not: giving it back changed nothing
    store.close()


def test_a_reservation_whose_reply_was_lost_is_given_back_once(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisStore(redis_server.url)
    counted = store._reserve_script

    def counted_then_connection_lost(*args: object, **kwargs: object) -> object:
        counted(*args, **kwargs)  # Redis counts the images ...
        raise redis.ConnectionError("connection lost before the reply")  # ... and the reply never arrives

    monkeypatch.setattr(store, "_reserve_script", counted_then_connection_lost)
    with pytest.raises(StateUnavailable):
        store.reserve("alice", 3, limit=10)
    with redis_server.client() as client:
        assert client.get("stingy:budget:alice") == "3"
    monkeypatch.undo()
    assert store.used("alice") == 0 and store.pending == 0  # given back on the next call
    assert store.used("alice") == 0  # and only once
    store.close()


def test_a_retried_reservation_counts_once(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    keys, args = ["stingy:budget:alice", "stingy:reservation:same"], [3, 10, 60_000]
    assert store._reserve_script(keys=keys, args=args) == [1, 3]
    assert store._reserve_script(keys=keys, args=args) == [1, 3]  # the same marker: counted already
    assert store.used("alice") == 3
    store.close()
