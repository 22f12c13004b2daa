"""Fixtures for the API tests: the app running in-process (its lifespan on a background event loop, reached
through httpx's ASGI transport) and an in-process reference of what the teacher releases."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio.from_thread
import httpx
import pytest
import torch
from fastapi import FastAPI

from app.main import create_app
from app.settings import ServeSettings
from defense import LogitPolicy, SparseLogits
from training.checkpoint import load_checkpoint
from training.devices import prepare_inputs

T = TypeVar("T")


class AppClient:
    """Synchronous access to an app whose lifespan runs on a portal's event loop.

    ``request``/``get``/``post`` send one request; ``run(fn)`` runs ``await fn(client)`` on the app's loop
    (for concurrent scenarios).
    """

    def __init__(self, portal: anyio.from_thread.BlockingPortal, client: httpx.AsyncClient, app: FastAPI) -> None:
        self.portal, self.client, self.app = portal, client, app

    @property
    def service(self):  # type: ignore[no-untyped-def]
        return self.app.state.service

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(functools.partial(self.client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def run(self, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        return self.portal.call(scenario, self.client)


@asynccontextmanager
async def _serving(app: FastAPI, wait_ready: bool, raise_app_exceptions: bool) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        if wait_ready:
            assert await app.state.service.wait_ready(), "the service did not become ready"
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@contextmanager
def running_app(settings: ServeSettings, *, wait_ready: bool = True, raise_app_exceptions: bool = True) -> Iterator[AppClient]:
    """``create_app(settings)`` with its lifespan entered (and warmed up unless ``wait_ready=False``)."""
    app = create_app(settings)
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(_serving(app, wait_ready, raise_app_exceptions)) as client:
            yield AppClient(portal, client, app)


def make_settings(checkpoint: Path, folder: Path, **overrides: Any) -> ServeSettings:
    """Settings for tests: the model on the CPU unless ``device`` is given (answers are compared exactly with a
    :class:`Reference` on the same device), no access log unless asked, the budget database inside ``folder``."""
    return ServeSettings(**{"checkpoint": checkpoint, "device": "cpu", "access_log": "", "budget_db": folder / "budget.sqlite3",
                            **overrides})


class Reference:
    """The teacher in-process on ``device``, as a server on that device runs it (channels-last on CUDA): what a
    policy releases for a batch, computed without the service."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model, self.card = load_checkpoint(checkpoint, self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The raw logits ``[B, K]`` float32, on the CPU."""
        return self._device_logits(images).cpu()

    def released(self, images: torch.Tensor, policy: LogitPolicy) -> SparseLogits:
        """The policy's released pairs, computed on the device from the device's logits, on the CPU."""
        released = policy.sparse(self._device_logits(images))
        return SparseLogits(indices=released.indices.cpu(), values=released.values.float().cpu())

    def _device_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            # concatenated as the server batches requests: for one channel, cat settles the ambiguous
            # channels-last strides the way the server's batch has them (CUDA kernels may depend on them)
            inputs = torch.cat([prepare_inputs(images, self.card.mean, self.card.std, self.device)])
            return self.model(inputs).float()


@pytest.fixture(scope="session")
def reference(tiny_teacher: Path) -> Reference:
    return Reference(tiny_teacher)


@pytest.fixture(scope="module")
def stingy_app(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppClient]:
    """The tiny teacher behind ``stingy`` with r = 0.2 (N = 2 of K = 10), no keys, no limits but the defaults."""
    with running_app(make_settings(tiny_teacher, tmp_path_factory.mktemp("stingy_app"), sparse_ratio=0.2)) as client:
        yield client


def random_images(count: int, seed: int, shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    """Seeded uint8 images ``[count, *shape]``."""
    return torch.randint(0, 256, (count, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def worker_pids(pid: int) -> list[int]:
    """The worker processes that ``pid`` spawned (from /proc: children running multiprocessing's spawn_main);
    none for a single server process."""
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


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until it holds; fail with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
