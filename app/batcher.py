"""Dynamic batching: concurrent requests merge into one forward pass.

Requests queue whole (a request's images are never split across passes). A pass starts when the queued
images reach ``max_batch_size`` or the oldest request has waited ``max_delay_s``, whichever comes first;
a single request larger than ``max_batch_size`` runs alone. Forward passes run one at a time on a
dedicated worker thread, so the event loop stays free; each request gets back exactly the rows of its
own images, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from torch import Tensor

from defense import SparseLogits

BatchObserver = Callable[[int, float], None]  # (images in the pass, seconds it took)


@dataclass
class _Job:
    images: Tensor
    future: asyncio.Future[SparseLogits]
    enqueued: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return int(self.images.shape[0])


class BatcherClosed(RuntimeError):
    """The batcher is stopping and takes no new requests."""


class DynamicBatcher:
    """Queue of image batches in front of one ``forward`` function.

    ``forward`` maps a list of ``[B_i, ...]`` tensors to :class:`SparseLogits` with ``sum B_i`` rows, in order. With ``merge=False``
    every request is its own forward pass (batching off).
    """

    def __init__(
        self, forward: Callable[[list[Tensor]], SparseLogits], *, max_batch_size: int, max_delay_s: float, merge: bool = True,
        observe: BatchObserver | None = None,
    ) -> None:
        self._forward = forward
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.merge = merge
        self._observe = observe
        self._jobs: deque[_Job] = deque()
        self._queued_images = 0
        self._arrived: asyncio.Event | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued_images(self) -> int:
        """Images waiting for a forward pass (not counting the pass in progress)."""
        return self._queued_images

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._arrived = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stingy-forward")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stingy-batcher")

    async def stop(self) -> None:
        """Take no new requests, finish every queued one, then stop the loop and the worker thread."""
        if self._task is None or self._arrived is None:
            return
        self._closing = True
        self._arrived.set()
        await self._task
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, images: Tensor) -> SparseLogits:
        """Queue ``images`` ``[B, ...]`` and wait for their ``B`` rows of released pairs."""
        if self._closing or self._arrived is None:
            raise BatcherClosed("the server is shutting down")
        if images.shape[0] == 0:
            raise ValueError("cannot submit an empty batch")
        job = _Job(images, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._queued_images += len(job)
        self._arrived.set()
        return await job.future

    async def _run(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while self._jobs or not self._closing:
            if not self._jobs:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self.merge:
                await self._wait_for_more()
            await self._execute(self._take(), loop)

    async def _wait_for_more(self) -> None:
        """Wait until the queue fills a batch or the oldest job's delay runs out."""
        assert self._arrived is not None
        deadline = self._jobs[0].enqueued + self.max_delay_s
        while self._queued_images < self.max_batch_size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Job]:
        """The oldest job, plus (when merging) the following jobs that still fit ``max_batch_size``."""
        jobs = [self._jobs.popleft()]
        size = len(jobs[0])
        while self.merge and self._jobs and size + len(self._jobs[0]) <= self.max_batch_size:
            jobs.append(self._jobs.popleft())
            size += len(jobs[-1])
        self._queued_images -= size
        return jobs

    async def _execute(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        parts = [job.images for job in jobs]
        began = time.perf_counter()
        try:
            released = await loop.run_in_executor(self._executor, self._forward, parts)
        except Exception as error:  # the forward failed: every request in the pass gets the error
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        if self._observe is not None:
            self._observe(sum(len(job) for job in jobs), time.perf_counter() - began)
        offset = 0
        for job in jobs:
            rows = slice(offset, offset + len(job))
            offset += len(job)
            if not job.future.done():  # a cancelled request simply drops its rows
                job.future.set_result(SparseLogits(indices=released.indices[rows], values=released.values[rows]))
