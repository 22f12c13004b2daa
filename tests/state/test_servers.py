"""Budgets and rate limits shared by several servers: real ``stingy-serve`` processes on one Redis (and, for
``--workers``, on one SQLite file) under concurrent load never answer more images than the budget, and a Redis
that dies and comes back makes the servers answer a clear 503 meanwhile, counting nothing twice and losing nothing."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.launch import RedisServer, ServerProcess, running_server
from tests.api.conftest import make_settings, random_images, running_app, wait_for, worker_pids

SECRET, METRICS_SECRET = "shared-secret-1", "shared-metrics-2"
AUTH, METRICS_AUTH = {"Authorization": f"Bearer {SECRET}"}, {"Authorization": f"Bearer {METRICS_SECRET}"}
BUDGET = 1_000_000
ONE_IMAGE = {"pixels": random_images(1, seed=5).tolist()}


@dataclass
class Answer:
    """One response as the load sees it: which server (or worker), status, remaining budget, the error code, when it was
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
    """Two ``stingy-serve`` processes, each its own model, budgets and rate limits in the module's Redis: two
    single-process servers (``--workers 1``), as replicas on two machines would be; the two-worker test below
    shares one store between the workers of one server."""
    folder = tmp_path_factory.mktemp("two_servers")
    args = ["--checkpoint", str(tiny_teacher), "--device", "cpu", "--workers", "1", "--budget-images", str(BUDGET), "--rate-limit", "100000",
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


def _sockets(pid: int) -> int:
    """How many sockets ``pid`` has open (a descriptor closed while we look is not counted)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += fd.readlink().name.startswith("socket:")
        except FileNotFoundError:
            continue
    return count


@dataclass
class WorkerClients:
    """Keep-alive connections, ``per_worker`` held by each worker process (``clients[pid]``), and how many
    ``GET /healthz`` it took to open them."""

    clients: dict[int, list[httpx.AsyncClient]]
    health_checks: int


async def _connect_to_every_worker(url: str, workers: list[int], per_worker: int, timeout: float = 60.0) -> WorkerClients:
    """Open connections one at a time (one ``GET /healthz`` each), each kept by the worker whose socket count it
    raised, until every worker holds ``per_worker``: the kernel hands a connection to whichever worker accepts
    first (one worker may accept a whole burst; one still warming up accepts none), so a connection to a worker
    that holds enough already is closed, and the next one is opened after a pause. Fails when some worker holds
    fewer within ``timeout`` seconds."""
    held: dict[int, list[httpx.AsyncClient]] = {pid: [] for pid in workers}
    opened, deadline = 0, time.monotonic() + timeout
    try:
        while any(len(clients) < per_worker for clients in held.values()):
            assert time.monotonic() < deadline, f"connections held per worker after {timeout} s: { {p: len(c) for p, c in held.items()} }"
            before = {pid: _sockets(pid) for pid in workers}
            async with AsyncExitStack() as unless_kept:
                client = await unless_kept.enter_async_context(httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)))
                assert (await client.get(url + "/healthz")).status_code == 200
                opened += 1
                gained = [pid for pid in workers if _sockets(pid) > before[pid]]
                if len(gained) == 1 and len(held[gained[0]]) < per_worker:
                    held[gained[0]].append(client)
                    unless_kept.pop_all()
                    continue
            await asyncio.sleep(0.05)  # closed: a worker with enough, or unclear (a closed socket went away meanwhile)
    except BaseException:
        await asyncio.gather(*(client.aclose() for clients in held.values() for client in clients))
        raise
    return WorkerClients(held, opened)


Totals = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, sorted labels) -> value


async def _read_metrics(client: httpx.AsyncClient, url: str) -> Totals:
    """Every sample of a ``/metrics`` answer, except those of ``/metrics`` requests (which the reads change)."""
    response = await client.get(url + "/metrics", headers=METRICS_AUTH)
    assert response.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples
            if sample.labels.get("route") != "/metrics"}


async def _scrape(url: str) -> Totals:
    async with httpx.AsyncClient(timeout=60) as client:
        return await _read_metrics(client, url)


def _predict_requests(totals: Totals, status: int) -> float:
    return totals.get(("stingy_requests_total", (("method", "POST"), ("route", "/v1/predict"), ("status", str(status)))), 0.0)


@pytest.mark.slow
def test_two_workers_on_one_sqlite_file_keep_budget_rate_limit_and_metrics_exact(tiny_teacher: Path, tmp_path: Path) -> None:
    """``--workers 2`` with the default SQLite store: 120 concurrent requests for one key over 16 connections,
    8 held by each worker, a burst of 100 that does not refill during the test, 40 images of budget: exactly 40
    served, 60 refused for the budget, 20 for the rate. ``/metrics`` read through either worker, several times,
    reports exactly those counts for the whole server, still after a worker has ended (retired by SIGTTOU), from
    a private directory that is gone once the server stops."""
    args = ["--checkpoint", str(tiny_teacher), "--device", "cpu", "--workers", "2", "--budget-images", "40",
            "--budget-db", str(tmp_path / "state.sqlite3"), "--rate-limit", "0.001", "--rate-burst", "100",
            "--keep-alive-timeout-s", "120", "--access-log", "", "--log-level", "warning"]
    env = {"STINGY_API_KEYS": f"alice:{SECRET}", "STINGY_METRICS_KEY": METRICS_SECRET, "TMPDIR": str(tmp_path)}
    with running_server(args, env=env, log_dir=tmp_path) as server:
        workers = worker_pids(server.process.pid)
        assert len(workers) == 2
        [metrics_dir] = tmp_path.glob("stingy-metrics-*")
        assert metrics_dir.stat().st_mode & 0o777 == 0o700
        answers, connected, reads = asyncio.run(_load_and_read_metrics(server.url, workers))
        assert all(list(metrics_dir.glob(f"gauge_live*_{pid}.db")) for pid in workers)
        server.process.send_signal(signal.SIGTTOU)  # the supervisor retires a worker, and drops its queue depth from the sum
        wait_for(lambda: len(worker_pids(server.process.pid)) == 1, 30, "no worker was retired")
        [retired] = set(workers) - set(worker_pids(server.process.pid))
        wait_for(lambda: not list(metrics_dir.glob(f"gauge_live*_{retired}.db")), 10, "the retired worker's gauge file stays")
        after_retiring = asyncio.run(_scrape(server.url))
        assert server.terminate() == -15  # the parent stops its workers, then ends by SIGTERM, as a single server does
    assert not metrics_dir.exists()
    assert {a.server for a in answers} == set(workers) and connected.health_checks >= 16
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 40 + [403] * 60 + [429] * 20
    assert sorted(a.remaining for a in answers if a.status == 200) == list(range(40))
    assert all(read == reads[0] for read in reads)  # whichever worker answers, the same whole-server totals
    totals = reads[0]
    worker_gauges = {("stingy_workers", ()): 2, ("stingy_ready_workers", ()): 2}
    assert {name: totals[name] for name in worker_gauges} == worker_gauges
    assert {name: after_retiring.pop(name) for name in worker_gauges} == {("stingy_workers", ()): 2, ("stingy_ready_workers", ()): 1}
    assert after_retiring == {name: value for name, value in totals.items() if name not in worker_gauges}  # counts stay
    assert [_predict_requests(totals, status) for status in (200, 403, 429)] == [40, 60, 20]
    assert totals[("stingy_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))] == connected.health_checks
    assert totals[("stingy_images_served_total", (("key", "alice"),))] == 40
    # Every image served went through a forward pass; a request refused when charged after it had one too.
    assert 40 <= totals[("stingy_batch_size_images_sum", ())] <= 100
    assert totals[("stingy_budget_rejections_total", (("key", "alice"),))] == 60
    assert totals[("stingy_rate_limit_rejections_total", (("key", "alice"),))] == 20
    assert totals[("stingy_queue_depth_images", ())] == 0


async def _load_and_read_metrics(url: str, workers: list[int], requests: int = 120) -> tuple[list[Answer], WorkerClients, list[Totals]]:
    """8 connections held by each worker; ``requests`` one-image requests, each connection sending its share
    one after another (``Answer.server``: the worker's pid); then ``/metrics`` read three times through a
    connection of each worker."""
    idle = {pid: _sockets(pid) for pid in workers}
    connected = await _connect_to_every_worker(url, workers, per_worker=8)
    pairs = [(pid, client) for pid, clients in connected.clients.items() for client in clients]
    try:
        async def share(pid: int, client: httpx.AsyncClient, count: int) -> list[Answer]:
            return [await _send(client, pid, url) for _ in range(count)]

        shares = await asyncio.gather(*(share(pid, client, requests // len(pairs) + (i < requests % len(pairs)))
                                        for i, (pid, client) in enumerate(pairs)))
        assert all(_sockets(pid) >= idle[pid] + 8 for pid in workers)  # each worker still holds its connections
        first, *others = [clients[0] for clients in connected.clients.values()]
        deadline = time.monotonic() + 10  # a request is counted just after its response has been sent
        while sum(map(partial(_predict_requests, await _read_metrics(first, url)), (200, 403, 429))) < requests:
            assert time.monotonic() < deadline, "the requests sent were not all counted within 10 s"
            await asyncio.sleep(0.05)
        reads = [await _read_metrics(client, url) for _ in range(3) for client in (first, *others)]
    finally:
        await asyncio.gather(*(client.aclose() for _, client in pairs))
    return [answer for answers in shares for answer in answers], connected, reads
