"""Dynamic batching: concurrent requests merge into one forward pass, behind a bounded queue.

Requests queue whole (a request's images are never split across passes). One worker thread runs the
passes, one at a time, so the event loop stays free. When the worker is idle, a pass starts once the queued
images reach ``max_batch_size`` or the oldest request has waited ``max_delay_s``, whichever comes first.
The same rule holds when a pass ends, but then the oldest request has usually waited through that pass
already, so the next pass takes whatever queued meanwhile at once: under load passes grow with the load,
up to ``max_batch_size``, with no delay added. A single request larger than ``max_batch_size`` runs alone. Each request gets back exactly the rows
of its own images, in order.

Load shedding: a request is refused at once with :class:`QueueFull` (an empty queue takes any request), instead
of waiting without bound, when its images would take the queue past ``max_queue_wait_s`` seconds of work or past
``max_queue_images``. Seconds of work are ``queued images x seconds per image``, the latter a moving average
over the forward passes (``RATE_SMOOTHING`` of each new pass), seeded by :meth:`DynamicBatcher.learn_rate`.

Wake-ups are per pass, not per request: a submission wakes the worker only when it was idle or when the
queue has just filled a batch, and the worker hands the results of a whole pass back to the event loop in
one call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from defense import SparseLogits

BatchObserver = Callable[[int, float], None]  # (images in the pass, seconds it took)
QueueObserver = Callable[[int], None]  # (images waiting)


@dataclass
class _Job:
    images: Tensor
    future: asyncio.Future[SparseLogits]
    enqueued: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return int(self.images.shape[0])


class BatcherClosed(RuntimeError):
    """The batcher is stopping and takes no new requests."""


class QueueFull(RuntimeError):
    """The queue holds ``queued`` images and cannot take ``requested`` more within ``limit`` (in words)."""

    def __init__(self, queued: int, requested: int, limit: str) -> None:
        super().__init__(f"the queue holds {queued} images; {requested} more would pass {limit}")
        self.queued, self.requested, self.limit = queued, requested, limit


RATE_SMOOTHING = 0.2  # weight of the newest forward pass in the moving average of seconds per image


class DynamicBatcher:
    """Queue of image batches in front of one ``forward`` function, run on a dedicated thread.

    ``forward`` maps a list of ``[B_i, ...]`` tensors to :class:`SparseLogits` with ``sum B_i`` rows, in order.
    With ``merge=False`` every request is its own forward pass (batching off). ``max_queue_wait_s`` bounds the
    seconds of work waiting and ``max_queue_images`` the images waiting (``None``: no bound). ``observe`` is called on the worker thread after each pass, and
    ``observe_queue`` with :attr:`queued_images` each time that changes (with the queue's lock held, so the
    calls come in the order of the changes).
    """

    def __init__(
        self, forward: Callable[[list[Tensor]], SparseLogits], *, max_batch_size: int, max_delay_s: float, merge: bool = True,
        max_queue_images: int | None = None, max_queue_wait_s: float | None = None, observe: BatchObserver | None = None,
        observe_queue: QueueObserver = lambda images: None,
    ) -> None:
        self._forward = forward
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.merge = merge
        self.max_queue_images = max_queue_images
        self.max_queue_wait_s = max_queue_wait_s
        self._seconds_per_image: float | None = None
        self._observe = observe
        self._observe_queue = observe_queue
        self._jobs: deque[_Job] = deque()
        self._queued_images = 0
        self._changed = threading.Condition()
        self._worker_idle = False  # waiting for a first request
        self._worker_filling = False  # waiting for a batch to fill or the delay to run out
        self._closing = True
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queued_images(self) -> int:
        """Images waiting for a forward pass (not counting the pass in progress)."""
        return self._queued_images

    @property
    def seconds_per_image(self) -> float | None:
        """The moving average of forward seconds per image (``None`` before any pass or :meth:`learn_rate`)."""
        return self._seconds_per_image

    def learn_rate(self, images: int, seconds: float) -> None:
        """Fold a forward pass of ``images`` that took ``seconds`` into :attr:`seconds_per_image`."""
        latest = seconds / images
        average = self._seconds_per_image
        self._seconds_per_image = latest if average is None else (1 - RATE_SMOOTHING) * average + RATE_SMOOTHING * latest

    def has_room(self, images: int) -> bool:
        """Whether a request of ``images`` would be queued now (see :meth:`submit`)."""
        return self._limit_passed(images) is None

    def _limit_passed(self, images: int) -> str | None:
        """The limit, in words, that ``images`` more would take the queue past; ``None`` when they fit (an empty
        queue takes any request)."""
        after = self._queued_images + images
        if self._queued_images == 0:
            return None
        if self.max_queue_images is not None and after > self.max_queue_images:
            return f"its limit of {self.max_queue_images} images"
        per_image, limit_s = self._seconds_per_image, self.max_queue_wait_s
        if limit_s is not None and per_image is not None and after * per_image > limit_s:
            return f"its limit of {limit_s:g} s of work at {1 / per_image:.0f} images/s"
        return None

    def start(self) -> None:
        """Start the worker thread; results come back on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="stingy-forward", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Take no new requests, finish every queued one, then stop the worker thread."""
        if self._thread is None:
            return
        with self._changed:
            self._closing = True
            self._changed.notify()
        thread, self._thread = self._thread, None
        await asyncio.get_running_loop().run_in_executor(None, thread.join)

    async def submit(self, images: Tensor) -> SparseLogits:
        """Queue ``images`` ``[B, ...]`` and wait for their ``B`` rows of released pairs.

        Raises :class:`QueueFull` at once when the queue has no room for them (nothing is queued then), and
        :class:`BatcherClosed` once :meth:`stop` has begun."""
        count = int(images.shape[0])
        if count == 0:
            raise ValueError("cannot submit an empty batch")
        with self._changed:
            if self._closing or self._loop is None:
                raise BatcherClosed("the server is shutting down")
            limit = self._limit_passed(count)
            if limit is not None:
                raise QueueFull(self._queued_images, count, limit)
            job = _Job(images, self._loop.create_future())
            self._jobs.append(job)
            self._queued_images += count
            self._observe_queue(self._queued_images)
            if self._worker_idle or (self._worker_filling and self._queued_images >= self.max_batch_size):
                self._changed.notify()
        return await job.future

    # ---- the worker thread ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._jobs and not self._closing:
                    self._worker_idle = True
                    self._changed.wait()
                self._worker_idle = False
                if not self._jobs:  # closing, and the queue is drained
                    return
                if self.merge:
                    self._wait_for_more()
                jobs = self._take()
            self._execute(jobs)

    def _wait_for_more(self) -> None:
        """With the lock held: wait until the queue fills a batch or the oldest job's delay runs out."""
        deadline = self._jobs[0].enqueued + self.max_delay_s
        self._worker_filling = True
        while self._queued_images < self.max_batch_size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.wait(remaining)
        self._worker_filling = False

    def _take(self) -> list[_Job]:
        """With the lock held: the oldest job, plus (when merging) the following jobs that fit ``max_batch_size``."""
        jobs = [self._jobs.popleft()]
        size = len(jobs[0])
        while self.merge and self._jobs and size + len(self._jobs[0]) <= self.max_batch_size:
            jobs.append(self._jobs.popleft())
            size += len(jobs[-1])
        self._queued_images -= size
        self._observe_queue(self._queued_images)
        return jobs

    def _execute(self, jobs: list[_Job]) -> None:
        assert self._loop is not None
        began = time.perf_counter()
        try:
            released = self._forward([job.images for job in jobs])
        except Exception as error:  # the forward failed: every request in the pass gets the error
            self._loop.call_soon_threadsafe(_fail, jobs, error)
            return
        images, seconds = sum(len(job) for job in jobs), time.perf_counter() - began
        self.learn_rate(images, seconds)
        if self._observe is not None:
            self._observe(images, seconds)
        self._loop.call_soon_threadsafe(_deliver, jobs, released)


def _deliver(jobs: list[_Job], released: SparseLogits) -> None:
    """On the event loop: each job's rows of ``released``, in order."""
    offset = 0
    for job in jobs:
        rows = slice(offset, offset + len(job))
        offset += len(job)
        if not job.future.done():  # a cancelled request simply drops its rows
            job.future.set_result(SparseLogits(indices=released.indices[rows], values=released.values[rows]))


def _fail(jobs: list[_Job], error: Exception) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
