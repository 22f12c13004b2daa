"""Budgets and rate limits shared by several servers: real ``stingy-serve`` processes on one Redis (and, for
``--workers``, on one SQLite file) under concurrent load never answer more images than the budget, and a Redis
that dies and comes back makes the servers answer a clear 503 meanwhile, counting nothing twice and losing nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.launch import RedisServer, ServerProcess, running_server
from tests.api.conftest import make_settings, random_images, running_app

SECRET = "shared-secret-1"
AUTH = {"Authorization": f"Bearer {SECRET}"}
BUDGET = 1_000_000
ONE_IMAGE = {"pixels": random_images(1, seed=5).tolist()}


@dataclass
class Answer:
    """One response as the load sees it: which server, status, remaining budget, the error code, when it was
    sent and when it was answered."""

    server: int
    status: int
    remaining: int | None
    code: str | None
    retry_after: str | None
    sent: float
    at: float


async def _send(client: httpx.AsyncClient, server: int, url: str) -> Answer:
    sent = time.monotonic()
    response = await client.post(url + "/v1/predict", json=ONE_IMAGE, headers=AUTH)
    ok = response.status_code == 200
    return Answer(server, response.status_code, int(response.headers["x-budget-remaining"]) if ok else None,
                  None if ok else response.json()["code"], response.headers.get("retry-after"), sent, time.monotonic())


def load(urls: list[str], requests: int, concurrency: int, connected: Callable[[], None] = lambda: None) -> list[Answer]:
    """``requests`` one-image requests, alternating between ``urls``, ``concurrency`` at a time; ``connected``
    runs after the last answer, while the client still holds its keep-alive connections."""

    async def run() -> list[Answer]:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
            async def one(index: int) -> Answer:
                async with gate:
                    return await _send(client, index % len(urls), urls[index % len(urls)])

            answers = await asyncio.gather(*(one(i) for i in range(requests)))
            connected()
            return answers

    return asyncio.run(run())


def load_until(urls: list[str], stop: threading.Event, concurrency: int) -> list[Answer]:
    """One-image requests from ``concurrency`` clients (client i on server i mod len(urls)) until ``stop`` is set."""

    async def run() -> list[Answer]:
        answers: list[Answer] = []
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
            async def client_loop(index: int) -> None:
                while not stop.is_set():
                    answers.append(await _send(client, index % len(urls), urls[index % len(urls)]))

            await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
        return answers

    return asyncio.run(run())


@pytest.fixture(scope="module")
def two_servers(redis_module: RedisServer, tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two ``stingy-serve`` processes, each its own model, budgets and rate limits in the module's Redis."""
    folder = tmp_path_factory.mktemp("two_servers")
    args = ["--checkpoint", str(tiny_teacher), "--device", "cpu", "--budget-images", str(BUDGET), "--rate-limit", "100000",
            "--state", redis_module.url, "--access-log", "", "--log-level", "warning"]
    with ExitStack() as stack:
        yield [stack.enter_context(running_server(args, env={"STINGY_API_KEYS": f"alice:{SECRET}"}, log_dir=folder)) for _ in range(2)]


@pytest.mark.slow
def test_two_servers_on_one_key_never_overspend(two_servers: list[ServerProcess], redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        client.set("stingy:budget:alice", BUDGET - 40)  # 40 images left, shared by both servers
    answers = load([server.url for server in two_servers], requests=120, concurrency=16)
    served = [answer for answer in answers if answer.status == 200]
    assert len(served) == 40 and {a.server for a in served} == {0, 1}  # both servers answered some
    assert sorted(a.remaining for a in served) == list(range(40))  # each image of the budget granted exactly once
    assert {a.code for a in answers if a.status != 200} == {"budget_exhausted"} and len(answers) == 120
    with redis_server.client() as client:
        assert client.get("stingy:budget:alice") == str(BUDGET)


@pytest.mark.slow
def test_a_redis_crash_under_load_answers_503_and_loses_nothing(two_servers: list[ServerProcess], redis_server: RedisServer) -> None:
    stop = threading.Event()
    answers: list[Answer] = []
    loader = threading.Thread(target=lambda: answers.extend(load_until([s.url for s in two_servers], stop, concurrency=8)))
    loader.start()
    try:
        time.sleep(1.5)
        redis_server.stop(kill=True)  # a crash: no clean shutdown
        down = time.monotonic()
        time.sleep(1.5)
        restarting = time.monotonic()
        redis_server.start()  # replays its append-only file
        back = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        loader.join(timeout=120)
    during = [a for a in answers if down < a.sent and a.at < restarting]
    assert during and all(a.status == 503 and a.code == "state_unavailable" and a.retry_after == "1" for a in during)
    after = [a for a in answers if a.sent > back + 0.5]
    assert after and all(a.status == 200 for a in after) and {a.server for a in after} == {0, 1}
    assert {a.status for a in answers} <= {200, 503}
    served = sum(a.status == 200 for a in answers)
    with redis_server.client() as client:
        # Nothing counted twice, nothing lost. (The remaining counts the 200s carried may repeat: a reservation
        # whose reply the crash cut off is given back later, and the next one then reports the same count.)
        assert int(client.get("stingy:budget:alice")) == served


def test_an_app_answers_503_while_redis_is_down_and_recovers(tiny_teacher: Path, tmp_path: Path, redis_server: RedisServer) -> None:
    settings = make_settings(tiny_teacher, tmp_path, state=redis_server.url, budget_images=10, rate_limit=1000,
                             api_keys=[f"alice:{SECRET}"])
    with running_app(settings) as client:
        assert client.post("/v1/predict", json=ONE_IMAGE, headers=AUTH).headers["x-budget-remaining"] == "9"
        redis_server.stop()
        for method, path, headers in (("POST", "/v1/predict", AUTH), ("GET", "/v1/model", AUTH),
                                      ("GET", "/v1/model", {"Authorization": "Bearer wrong"})):
            response = client.request(method, path, json=ONE_IMAGE if method == "POST" else None, headers=headers)
            assert response.status_code == 503 and response.headers["retry-after"] == "1", (method, path, headers)
            assert response.json() == {"error": "the budget and rate-limit store (Redis) is unavailable; retry shortly",
                                       "code": "state_unavailable"}
        assert client.get("/readyz").status_code == 200  # the model is fine: only keyed work waits for Redis
        redis_server.start()
        assert client.post("/v1/predict", json=ONE_IMAGE, headers=AUTH).headers["x-budget-remaining"] == "8"


def _workers(pid: int) -> list[int]:
    """The worker processes that ``pid`` spawned (from /proc: children running multiprocessing's spawn_main)."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        if parent == pid and b"spawn_main" in command:
            workers.append(int(stat.parent.name))
    return workers


def _sockets(pid: int) -> int:
    """How many sockets ``pid`` has open."""
    return sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if fd.readlink().name.startswith("socket:"))


@pytest.mark.slow
def test_two_workers_on_one_sqlite_file_keep_budget_and_rate_limit_exact(tiny_teacher: Path, tmp_path: Path) -> None:
    """``--workers 2`` with the default SQLite store: 120 concurrent requests for one key, a burst of 100 that
    does not refill during the test, 40 images of budget: exactly 40 served, 60 refused for the budget, 20 for
    the rate, and both workers served."""
    args = ["--checkpoint", str(tiny_teacher), "--device", "cpu", "--workers", "2", "--budget-images", "40",
            "--budget-db", str(tmp_path / "state.sqlite3"), "--rate-limit", "0.001", "--rate-burst", "100",
            "--access-log", "", "--log-level", "warning"]
    with running_server(args, env={"STINGY_API_KEYS": f"alice:{SECRET}"}, log_dir=tmp_path) as server:
        workers = _workers(server.process.pid)
        idle = {pid: _sockets(pid) for pid in workers}
        busy: dict[int, int] = {}
        answers = load([server.url], requests=120, concurrency=16, connected=lambda: busy.update({pid: _sockets(pid) for pid in workers}))
        assert server.terminate() == -15  # the parent stops its workers, then ends by SIGTERM, as a single server does
    assert len(workers) == 2 and all(busy[pid] > idle[pid] for pid in workers)  # each worker holds client connections
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 40 + [403] * 60 + [429] * 20
    assert sorted(a.remaining for a in answers if a.status == 200) == list(range(40))
