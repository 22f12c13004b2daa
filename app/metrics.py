"""Prometheus metrics of one service instance, in its own registry (so several apps never collide).

Labels are bounded: ``route`` is the route template (``unmatched`` for unknown paths), ``key`` a key id.
No metric carries inputs or model outputs.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _powers_of_two(limit: int) -> tuple[float, ...]:
    buckets, size = [], 1
    while size < limit:
        buckets.append(float(size))
        size *= 2
    return (*buckets, float(limit))


class ServiceMetrics:
    """Requests, latency, batching, queue depth, images served and rejections."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("stingy_requests", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("stingy_request_duration_seconds", "HTTP request latency by route and status.",
                                 ["route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("stingy_batch_size_images", "Images per forward pass.",
                                    buckets=_powers_of_two(max_batch_size), registry=self.registry)
        self.forward_seconds = Histogram("stingy_forward_duration_seconds", "Seconds per forward pass (model and policy).",
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("stingy_queue_depth_images", "Images waiting for a forward pass.", registry=self.registry)
        self.queue_depth.set_function(queue_depth)
        self.shed_requests = Counter("stingy_shed_requests", "Requests refused with 503 because the queue was full.",
                                     registry=self.registry)
        self.images_served = Counter("stingy_images_served", "Images answered, by key id.", ["key"], registry=self.registry)
        self.budget_rejections = Counter("stingy_budget_rejections", "Requests refused for an exhausted budget, by key id.",
                                         ["key"], registry=self.registry)
        self.rate_limit_rejections = Counter("stingy_rate_limit_rejections", "Requests refused by the rate limit, by key id.",
                                             ["key"], registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, str(status)).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.forward_seconds.observe(seconds)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
