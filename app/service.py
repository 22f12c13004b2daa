"""One server instance: the model runner and batcher, keys, budgets, rate limits, metrics and access log,
and their life cycle (load -> warm up -> ready -> drain)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import torch
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.access_log import AccessLog
from app.batcher import BatcherClosed, DynamicBatcher, QueueFull
from app.codecs import InputLimits
from app.errors import BudgetExhausted, NotFound, NotReady, Overloaded, RateLimited
from app.listen import is_loopback
from app.metrics import ServiceMetrics
from app.runner import ModelRunner
from app.security import ANONYMOUS, UNAUTHENTICATED, Budget, KeyRing
from app.settings import ServeSettings
from app.state import StateStore, TokenBucket, open_state
from defense import Disclosure, LogitPolicy, SparseLogits

logger = logging.getLogger("stingy.serve")

MODEL_VERSION = "1"
T = TypeVar("T")


@dataclass(frozen=True)
class Inference:
    """What a request gets back: its released pairs, and the key's remaining budget (None if unlimited)."""

    released: SparseLogits
    budget_remaining: int | None


class Service:
    """Holds every component of a server; :meth:`start` and :meth:`stop` run in the app's lifespan."""

    def __init__(self, settings: ServeSettings, metrics_dir: str | None = None) -> None:
        """Check the key configuration and set up metrics and the access log; nothing is loaded yet.
        ``metrics_dir``: in a worker of ``--workers N``, the directory where the workers' metrics are summed
        (see :class:`ServiceMetrics`).

        Raises ``ValueError`` for a bad key configuration, and when no key is configured while ``settings.host``
        can be reached from other machines, unless ``settings.allow_anonymous`` says the owner wants an open server.

        Only the keys' SHA-256 digests are kept: the secrets (API keys and the metrics key) are dropped from the
        service's copy of the settings.
        """
        names_needed = "with a budget, a key's count is kept under its name" if settings.budget_images is not None else None
        self.keys = KeyRing.from_sources((key.get_secret_value() for key in settings.api_keys), settings.api_keys_file,
                                         require_names=names_needed)
        if not self.keys.enabled and not settings.allow_anonymous and not is_loopback(settings.host):
            raise ValueError(f"no API key is configured and {settings.host} can be reached from other machines, so anyone could "
                             "query the model: set STINGY_API_KEYS or --api-keys-file, or pass --allow-anonymous "
                             "(STINGY_ALLOW_ANONYMOUS=1) to serve it open on purpose")
        self.metrics_keys = KeyRing([f"metrics:{settings.metrics_key.get_secret_value()}"]) if settings.metrics_key else None
        if self.metrics_keys is not None and self.metrics_keys.shares_a_secret_with(self.keys):
            raise ValueError("STINGY_METRICS_KEY must differ from every API key (it shows every key's usage)")
        self.settings = settings = settings.model_copy(update={"api_keys": [], "metrics_key": None})
        self.name = settings.served_name
        self.limits = InputLimits(settings.max_images_per_request, settings.max_image_pixels)
        self.key_bucket = TokenBucket.per_second("key", settings.rate_limit, settings.rate_burst) if settings.rate_limit else None
        self.auth_failure_bucket = TokenBucket.per_second("auth-failure", settings.auth_failure_rate, settings.auth_failure_burst)
        self.metrics = ServiceMetrics(settings.max_batch_size, metrics_dir)
        # One of the processes of ``--workers N`` (only they get a metrics directory), not an app run in process
        # or a single server: ``settings.workers`` says how many the parent was asked for, ``auto`` by default.
        self.is_worker = metrics_dir is not None
        self.processes = settings.workers if self.is_worker else 1
        self.metrics.workers.set(self.processes)
        self.access_log = AccessLog(settings.access_log)
        self.state: StateStore | None = None
        self.budget: Budget | None = None
        self.runner: ModelRunner | None = None
        self.batcher: DynamicBatcher | None = None
        self.disclosure: Disclosure | None = None
        self.ready = False
        self.warmup_error: str | None = None
        self._warmup: asyncio.Task[None] | None = None

    # ---- life cycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the checkpoint and check what its policy discloses (errors propagate: the server does not
        start), start batching, and warm up in the background; :attr:`ready` turns true when that is done."""
        settings = self.settings
        threads = settings.cpu_threads(self.processes)
        if threads is not None:
            torch.set_num_threads(threads)
        runner = await run_in_threadpool(
            ModelRunner, settings.checkpoint, settings.release_policy, device=settings.device, max_batch_size=settings.max_batch_size
        )
        self.disclosure = settings.check_disclosure(runner.num_classes)
        self.runner = runner
        if settings.budget_images is not None or self.key_bucket is not None or self.keys.enabled or self.metrics_keys is not None:
            self.state = await run_in_threadpool(open_state, settings.state, settings.budget_db)
            logger.info("budgets and rate limits in %s", self.state.kind)
        if settings.budget_images is not None:
            assert self.state is not None
            self.budget = Budget(self.state, settings.budget_images)
        if not self.keys.enabled:
            logger.warning("NO API KEYS: anyone who can connect to %s:%d may query the model, unidentified and without a key "
                           "of their own (every client is %r and shares one budget and rate limit); set STINGY_API_KEYS or "
                           "--api-keys-file to require keys", settings.host, settings.port, ANONYMOUS)
        self._announce_policy(runner.policy)
        self.batcher = DynamicBatcher(self.runner.forward, max_batch_size=settings.max_batch_size,
                                      max_delay_s=settings.max_delay_ms / 1000.0, merge=settings.batching,
                                      max_queue_images=settings.max_queue_images, max_queue_wait_s=settings.max_queue_wait_s,
                                      observe=self.metrics.observe_batch,
                                      observe_queue=self.metrics.queue_depth.set)
        self.batcher.start()
        self._warmup = asyncio.get_running_loop().create_task(self._warm_up(), name="stingy-warmup")

    def _announce_policy(self, policy: LogitPolicy) -> None:
        """Log what the policy releases per image: a warning when it is more than N < K logits or replayable."""
        assert self.disclosure is not None
        if self.disclosure.withholds:
            logger.info("policy %s releases per image: %s", policy.public_config(), self.disclosure.summary)
        else:
            logger.warning("policy %s releases per image: %s; this server does not hide the teacher's logits "
                           "(allowed by --allow-disclosing-policy)", policy.public_config(), self.disclosure.summary)
        if policy.replayable:
            logger.warning("policy %r draws its randomness from a fixed seed: whoever learns the seed can replay and "
                           "subtract it; leave the seed unset to draw from the operating system", policy.name)

    async def _warm_up(self) -> None:
        assert self.runner is not None
        try:
            seconds = await run_in_threadpool(self.runner.warm_up)
        except Exception as error:
            self.warmup_error = f"warm-up failed ({type(error).__name__}); see the server log"
            logger.exception("warm-up failed; the server stays not ready")
            return
        # The objects alive now (torch, the model, the app: about 370,000) live as long as the server; the
        # garbage collector's full passes need not scan them again (0.2 s each here: python -m bench.serving_parts).
        gc.freeze()
        assert self.batcher is not None
        self.batcher.learn_rate(self.runner.max_batch_size, seconds)  # the queue's first estimate of its seconds of work
        self.ready = True
        self.metrics.ready_workers.set(1)
        logger.info("ready (warm-up %.2f s): model %r = %s; key auth %s", seconds, self.name, self.runner.describe(),
                    f"on ({len(self.keys.key_ids)} keys)" if self.keys.enabled else "off")

    async def wait_ready(self) -> bool:
        """Wait for the warm-up started by :meth:`start` to finish; True when the service is ready."""
        if self._warmup is not None:
            await asyncio.shield(self._warmup)
        return self.ready

    async def stop(self) -> None:
        """Stop taking requests, finish the queued ones, and close the state store and the access log."""
        self.ready = False
        self.metrics.ready_workers.set(0)
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.state is not None:
            await run_in_threadpool(self.state.close)
        self.access_log.close()

    # ---- per request ---------------------------------------------------------------------------------

    def require_ready(self) -> ModelRunner:
        """The runner, or :class:`NotReady` while loading or warming up, or :class:`Overloaded` (load shedding)
        while the batching queue is full: inference routes call this before reading the body."""
        if not self.ready or self.runner is None:
            raise NotReady(self.warmup_error or "the model is loading or warming up; retry shortly")
        self._require_room(1)
        return self.runner

    def _require_room(self, images: int) -> None:
        if self.batcher is not None and not self.batcher.has_room(images):
            self._shed(f"the server is overloaded ({self.batcher.queued_images} images queued); retry shortly")

    def _shed(self, message: str) -> NoReturn:
        self.metrics.shed_requests.inc()
        raise Overloaded(message)

    def require_model(self, name: str, version: str | None = None) -> ModelRunner:
        """The runner when ``name`` (and ``version``) is what this server serves, else :class:`NotFound`."""
        if name != self.name:
            raise NotFound(f"model {name!r} not found; this server serves {self.name!r}")
        if version is not None and version != MODEL_VERSION:
            raise NotFound(f"model {name!r} has no version {version!r}; versions: [{MODEL_VERSION!r}]")
        if self.runner is None:
            raise NotReady("the model is loading; retry shortly")
        return self.runner

    def limit_rate(self, key_id: str) -> None:
        """Take a rate-limit token for ``key_id`` (no-op without a limit); :class:`RateLimited` when out."""
        if self.key_bucket is not None:
            self._take_token(self.key_bucket, key_id, key_id)

    def limit_auth_failures(self, address: str) -> None:
        """Count a failed authentication from ``address``; :class:`RateLimited` once it fails faster than
        ``auth_failure_rate`` (guessing keys then costs time). Valid keys never pass here."""
        self._take_token(self.auth_failure_bucket, address, UNAUTHENTICATED)

    def _take_token(self, bucket: TokenBucket, key: str, metrics_label: str) -> None:
        """Blocking (a state-store call): run it off the event loop."""
        assert self.state is not None, "the state store opens in start() whenever a rate limit or keys are set"
        try:
            self.state.take(bucket, key)
        except RateLimited:
            self.metrics.rate_limit_rejections.labels(metrics_label).inc()
            raise

    async def budget_remaining(self, key_id: str) -> int | None:
        """What ``key_id`` has left, or None without budgets."""
        return None if self.budget is None else await run_in_threadpool(self.budget.remaining, key_id)

    async def infer(self, key_id: str, images: Tensor) -> Inference:
        """Run the decoded ``images`` through the batcher, then charge them to ``key_id``'s budget.

        Answer, then charge: a request that does not fit what the key has left is refused whole before the
        forward pass (403, nothing counted), and the charge itself (atomic in the state store, refused if other
        requests spent the budget meanwhile: then nothing is released) comes after the forward pass, as the
        last step before the response is encoded and sent. A request the server fails to answer, or one lost
        in a crash before that point, costs nothing. A request that does not fit the batching queue is
        refused with :class:`Overloaded` (503), with nothing counted.
        """
        runner = self.require_ready()
        runner.check_input(images)
        count = int(images.shape[0])
        self._require_room(count)
        if self.budget is not None:
            await self._charge(self.budget.check, key_id, count)
        assert self.batcher is not None
        try:
            released = await self.batcher.submit(images)
        except BatcherClosed:
            raise NotReady("the server is shutting down") from None
        except QueueFull as error:
            self._shed(f"the server is overloaded ({error}); retry shortly")
        reservation = None if self.budget is None else await self._charge(self.budget.reserve, key_id, count)
        self.metrics.images_served.labels(key_id).inc(count)
        return Inference(released, None if reservation is None else reservation.remaining)

    async def _charge(self, step: Callable[[str, int], T], key_id: str, count: int) -> T:
        """A budget step (check or charge) off the event loop, counting its refusals in the metrics."""
        try:
            return await run_in_threadpool(step, key_id, count)
        except BudgetExhausted:
            self.metrics.budget_rejections.labels(key_id).inc()
            raise
