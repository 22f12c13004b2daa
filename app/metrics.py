"""Prometheus metrics of one service instance, in its own registry (so several apps never collide), or, in
a worker of ``stingy-serve --workers N``, summed over every worker of the server.

Labels are bounded: ``route`` is the route template (``unmatched`` for unknown paths), ``key`` a key id.
No metric carries inputs or model outputs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _powers_of_two(limit: int) -> tuple[float, ...]:
    buckets, size = [], 1
    while size < limit:
        buckets.append(float(size))
        size *= 2
    return (*buckets, float(limit))


class ServiceMetrics:
    """Requests, latency, batching, queue depth, workers (started and ready), images served and rejections.

    Without ``shared_dir`` the metrics live in this instance's own registry, which :meth:`exposition` renders.
    With ``shared_dir`` (a worker of ``--workers N``, whose process started with ``PROMETHEUS_MULTIPROC_DIR``
    set to that directory: prometheus_client's multiprocess mode) each worker writes its values to its own
    files there, and :meth:`exposition` renders the sum over the server's workers: counters and histograms
    over every worker that has run (one that died keeps its counts), the queue depth and the ready workers over
    the live workers (``livesum``: the supervisor removes a dead worker's gauge files, see :mod:`app.workers`).
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int, shared_dir: str | None = None) -> None:
        own = None if shared_dir else CollectorRegistry(auto_describe=True)
        self.registry = own if own is not None else _summed_over_workers(str(shared_dir))
        self.requests = Counter("stingy_requests", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=own)
        self.latency = Histogram("stingy_request_duration_seconds", "HTTP request latency by route and status.",
                                 ["route", "status"], buckets=LATENCY_BUCKETS, registry=own)
        self.batch_size = Histogram("stingy_batch_size_images", "Images per forward pass.",
                                    buckets=_powers_of_two(max_batch_size), registry=own)
        self.forward_seconds = Histogram("stingy_forward_duration_seconds", "Seconds per forward pass (model and policy).",
                                         buckets=LATENCY_BUCKETS, registry=own)
        self.queue_depth = Gauge("stingy_queue_depth_images", "Images waiting for a forward pass.",
                                 multiprocess_mode="livesum", registry=own)  # set by the batcher when it changes
        self.workers = Gauge("stingy_workers", "Server processes the server runs (--workers).", multiprocess_mode="livemax",
                             registry=own)
        self.ready_workers = Gauge("stingy_ready_workers", "Server processes warmed up and taking requests.",
                                   multiprocess_mode="livesum", registry=own)
        self.shed_requests = Counter("stingy_shed_requests", "Requests refused with 503 because the queue was full.",
                                     registry=own)
        self.images_served = Counter("stingy_images_served", "Images answered, by key id.", ["key"], registry=own)
        self.budget_rejections = Counter("stingy_budget_rejections", "Requests refused for an exhausted budget, by key id.",
                                         ["key"], registry=own)
        self.rate_limit_rejections = Counter("stingy_rate_limit_rejections", "Requests refused by the rate limit, by key id.",
                                             ["key"], registry=own)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, str(status)).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.forward_seconds.observe(seconds)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format (all workers' sums with ``shared_dir``)."""
        return generate_latest(self.registry)


def _summed_over_workers(directory: str) -> CollectorRegistry:
    """A registry whose only collector reads, at each scrape, every worker's files in ``directory``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry
