"""Query a server with the attacker's transfer set and store every answer as it arrives.

The transfer set is one split of a dataset the attacker holds (the paper's threat model: the teacher's
own training set), or a seeded random subset of ``budget`` images of it; a larger budget with the same
seed is a superset of a smaller one. Only positions without a stored response are sent, so a rerun
after a crash, a Ctrl-C or an exhausted budget resumes where the store ends.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from torch import Tensor
from tqdm.auto import tqdm

from attacker.client import TeacherClient, check_client_options
from attacker.errors import BudgetExhausted, PayloadTooLarge
from attacker.store import ResponseStore, to_ranges
from attacker.transport import RetryPolicy
from attacker.wire import ServerInfo
from training.data import ImageDataset, load_dataset, subset_positions
from training.progress import progress_enabled


class TargetMismatch(ValueError):
    """The served model cannot take the attacker's images (input shape or classes differ)."""


@dataclass(frozen=True)
class QuerySettings:
    """Where to send what. ``batch_size`` is images per request; ``budget`` caps the images queried."""

    url: str
    dataset: str
    split: str = "train"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    budget: int | None = None
    seed: int = 0
    batch_size: int = 256
    concurrency: int = 4
    api_key: str | None = None
    protocol: str = "auto"
    model: str | None = None
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        check_client_options(self.url, self.protocol, self.concurrency, self.timeout)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be a positive number of images, got {self.budget}")


@dataclass(frozen=True)
class QueryOutcome:
    """How a query session ended. ``status``: ``complete`` (every planned image is stored) or
    ``budget_exhausted`` (the server's budget ran out first; everything answered is stored)."""

    status: str
    planned: int
    stored: int
    new: int
    requests: int
    retries: int
    seconds: float
    server: ServerInfo

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def message(self, folder: Path) -> str:
        rate = self.new / self.seconds if self.seconds > 0 else 0.0
        head = (
            "done" if self.complete
            else "stopped early: the server's query budget is exhausted; everything answered is kept, rerun with more budget to continue"
        )
        return (f"{head}: {self.stored}/{self.planned} planned images stored in {folder} ({self.new} new, "
                f"{self.requests} requests, {self.retries} retries, {self.seconds:.1f}s, {rate:.1f} queries/s)")


def plan_transfer_set(size: int, budget: int | None, seed: int) -> Tensor:
    """The dataset positions to query, ascending: all ``size`` of them, or a seeded random ``budget``."""
    return subset_positions(size, size if budget is None else budget, seed)


def check_target(info: ServerInfo, dataset: ImageDataset) -> int:
    """The number of classes ``K``; :class:`TargetMismatch` when the served model does not fit ``dataset``."""
    data = dataset.info
    shape = (data.in_channels, data.image_size, data.image_size)
    if info.input_shape is not None and tuple(info.input_shape) != shape:
        raise TargetMismatch(f"the served model takes {list(info.input_shape)} inputs but {data.name} images are {list(shape)}")
    if info.num_classes is not None and info.num_classes != data.num_classes:
        raise TargetMismatch(f"the served model has {info.num_classes} classes but {data.name} has {data.num_classes}")
    return data.num_classes


def run_query(settings: QuerySettings, out: str | Path, transport: httpx.AsyncBaseTransport | None = None) -> QueryOutcome:
    """Query every planned image that ``out`` does not hold yet; returns how the session ended.

    Server failures (:mod:`attacker.errors`) propagate after the answers already received are
    stored; an exhausted budget is a normal end (``status == "budget_exhausted"``).
    """
    dataset = load_dataset(settings.dataset, settings.split, settings.data_root, **settings.dataset_options)
    return asyncio.run(_query(settings, dataset, ResponseStore(out), transport))


async def _query(
    settings: QuerySettings, dataset: ImageDataset, store: ResponseStore, transport: httpx.AsyncBaseTransport | None,
) -> QueryOutcome:
    began = time.perf_counter()
    client = TeacherClient(
        settings.url, api_key=settings.api_key, protocol=settings.protocol, model=settings.model,
        timeout=settings.timeout, concurrency=settings.concurrency, retry=settings.retry, transport=transport,
    )
    async with client:
        info = await client.connect()
        num_classes = check_target(info, dataset)
        plan = plan_transfer_set(len(dataset), settings.budget, settings.seed)
        with store.lock():
            store.open(_identity(info, settings, dataset, num_classes), _details(info, settings, plan))
            pending = store.pending(plan)
            session: dict[str, Any] = {"started": round(time.time(), 3), "status": "interrupted", "new": 0}
            try:
                status = await _send_all(client, store, dataset, pending, settings, len(plan) - len(pending), len(plan), session)
                session["status"] = status
            except Exception as error:
                session["status"] = f"failed: {error}"[:300]
                raise
            finally:
                session.update(seconds=round(time.perf_counter() - began, 3), requests=client.stats.requests, retries=client.stats.retries,
                               rate_limited=client.stats.rate_limited)
                store.record_session(session)
    stored = len(set(plan.tolist()) & store.answered())
    return QueryOutcome(status=status, planned=len(plan), stored=stored, new=int(session["new"]), requests=client.stats.requests,
                        retries=client.stats.retries, seconds=time.perf_counter() - began, server=info)


async def _send_all(
    client: TeacherClient, store: ResponseStore, dataset: ImageDataset, pending: Tensor, settings: QuerySettings,
    already: int, planned: int, session: dict[str, Any],
) -> str:
    """Send ``pending`` in batches, ``concurrency`` requests at a time; store each answer when it arrives."""
    largest = settings.batch_size  # shrinks when the server answers 413
    bar = tqdm(total=planned, initial=already, unit=" queries", desc="query", disable=not progress_enabled(), dynamic_ncols=True)

    async def send(images: Tensor, positions: list[int]) -> None:
        nonlocal largest
        if len(positions) > largest:
            step = largest
            for start in range(0, len(positions), step):
                await send(images[start:start + step], positions[start:start + step])
            return
        try:
            rows = await client.predict(images)
        except PayloadTooLarge:
            if len(positions) == 1:
                raise
            largest = min(largest, len(positions) // 2)
            await send(images, positions)
            return
        except BudgetExhausted:
            remaining = client.budget_remaining
            if len(positions) == 1 or remaining == 0:
                raise
            # The whole request was refused and nothing counted: spend what is left on a part of it.
            cut = remaining if remaining is not None and 0 < remaining < len(positions) else len(positions) // 2
            await send(images[:cut], positions[:cut])
            await send(images[cut:], positions[cut:])
            return
        store.append(positions, rows)
        session["new"] += len(positions)
        bar.update(len(positions))
        if client.budget_remaining is not None:
            bar.set_postfix(budget_left=client.budget_remaining, refresh=False)

    tasks: set[asyncio.Task[None]] = set()
    exhausted = False

    async def reap(wait_for: str) -> None:
        nonlocal exhausted
        done, _ = await asyncio.wait(tasks, return_when=wait_for)
        for task in done:
            tasks.discard(task)
            error = task.exception()
            if isinstance(error, BudgetExhausted):
                exhausted = True
            elif error is not None:
                for other in tasks:
                    other.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise error

    try:
        for batch in dataset.batches(settings.batch_size, indices=pending):
            if exhausted or client.budget_remaining == 0:
                break
            while len(tasks) >= settings.concurrency:
                await reap(asyncio.FIRST_COMPLETED)
            tasks.add(asyncio.create_task(send(batch.images, batch.indices.tolist())))
        while tasks:
            await reap(asyncio.ALL_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        bar.close()
    left = len(pending) - session["new"]
    if left == 0:
        return "complete"
    if exhausted or client.budget_remaining == 0:
        return "budget_exhausted"
    raise RuntimeError(f"{left} images were neither answered nor refused")  # a bug, never a server's doing


def _identity(info: ServerInfo, settings: QuerySettings, dataset: ImageDataset, num_classes: int) -> dict[str, Any]:
    return {
        "url": info.url, "model": info.model, "released_per_image": info.released_per_image, "policy": info.policy,
        "dataset": dataset.info.name, "split": settings.split, "dataset_size": len(dataset), "num_classes": num_classes,
    }


def _details(info: ServerInfo, settings: QuerySettings, plan: Tensor) -> dict[str, Any]:
    return {
        "server": {"url": info.url, "protocol": info.protocol, "model": info.model, "version": info.version,
                   "policy": info.policy, "released_per_image": info.released_per_image, "dataset": info.dataset},
        "dataset": {"name": settings.dataset, "split": settings.split, "root": settings.data_root, "options": settings.dataset_options},
        "plan": {"budget": settings.budget, "seed": settings.seed, "count": len(plan), "positions": to_ranges(plan.tolist())},
    }
