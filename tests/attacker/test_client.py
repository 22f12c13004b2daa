"""The HTTP client against the fake server: both protocols, retries, rate limits, refusals."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import torch

from attacker.client import TeacherClient
from attacker.errors import AttackError, BudgetExhausted, PayloadTooLarge, ProtocolError, RateLimited, ServerUnavailable, Unauthorized
from attacker.transport import RetryPolicy
from attacker.wire import TopN, released_row
from defense import make_policy
from tests.attacker.conftest import FAST_RETRY
from training.checkpoint import load_checkpoint
from training.data import load_dataset, normalize

URL = "http://fake"
Factory = Callable[..., Any]


class Sleeps:
    """Records the waits the client asks for instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def images(count: int = 6) -> torch.Tensor:
    return load_dataset("synthetic", "test").images[:count]


def predict(transport: httpx.AsyncBaseTransport, batch: torch.Tensor, **options: Any) -> tuple[list[TopN], TeacherClient]:
    async def go() -> tuple[list[TopN], TeacherClient]:
        async with TeacherClient(URL, transport=transport, **options) as client:
            await client.connect()
            return await client.predict(batch), client

    return asyncio.run(go())


def test_v2_is_preferred_and_answers_the_stingy_top_n(fake_server: Factory, tiny_teacher: Any) -> None:
    transport, _ = fake_server()
    batch = images()
    rows, client = predict(transport, batch)
    assert client.info is not None and client.info.protocol == "v2"
    assert (client.info.model, client.info.num_classes, client.info.released_per_image) == ("tiny", 10, 2)
    assert client.info.input_shape == (1, 28, 28) and client.info.policy == {"name": "stingy", "k": 2}
    model, card = load_checkpoint(tiny_teacher)
    with torch.inference_mode():
        expected = make_policy("stingy", k=2).sparse(model(normalize(batch, card.mean, card.std)))
    assert [row.classes for row in rows] == [tuple(r) for r in expected.indices.tolist()]
    for row, values in zip(rows, expected.values.tolist()):
        assert row.logits == pytest.approx(values, rel=1e-6)
        assert list(row.logits) == sorted(row.logits, reverse=True)


def test_v1_gives_the_same_answers_as_v2(fake_server: Factory) -> None:
    transport, _ = fake_server()
    batch = images()
    v2_rows, _ = predict(transport, batch, protocol="v2")
    v1_rows, client = predict(transport, batch, protocol="v1")
    assert client.info is not None and client.info.protocol == "v1"
    assert v1_rows == v2_rows


def test_v2_only_server_needs_the_model_name(fake_server: Factory) -> None:
    transport, _ = fake_server(v1=False)
    with pytest.raises(AttackError, match="--model"):
        predict(transport, images())
    rows, client = predict(transport, images(), model="tiny")
    assert client.info is not None and client.info.protocol == "v2" and client.info.released_per_image == 2
    assert len(rows) == 6


def test_v1_only_server_is_spoken_to_in_v1(fake_server: Factory) -> None:
    transport, _ = fake_server(v2=False)
    rows, client = predict(transport, images())
    assert client.info is not None and client.info.protocol == "v1" and all(len(row.classes) == 2 for row in rows)


def test_5xx_is_retried_with_bounded_full_jitter_backoff(fake_server: Factory) -> None:
    transport, knobs = fake_server()
    sleeps = Sleeps()
    retry = RetryPolicy(attempts=4, base_delay=0.5, max_delay=1.5)
    knobs.fail_first = 3
    rows, client = predict(transport, images(), retry=retry, sleep=sleeps)
    assert len(rows) == 6 and client.stats.retries == 3
    assert len(sleeps.waits) == 3
    for failures, wait in enumerate(sleeps.waits, start=1):
        assert 0.0 <= wait <= min(1.5, 0.5 * 2 ** (failures - 1))

    transport, knobs = fake_server()
    knobs.fail_first = 100
    with pytest.raises(ServerUnavailable, match="gave up after 4 attempts"):
        predict(transport, images(), retry=retry, sleep=Sleeps())
    assert knobs.requests == 4  # bounded: exactly `attempts` prediction requests


def test_backoff_is_full_jitter_and_capped() -> None:
    policy, rng = RetryPolicy(base_delay=1.0, max_delay=8.0), random.Random(0)
    for failures in range(1, 10):
        draws = [policy.backoff(failures, rng) for _ in range(200)]
        cap = min(8.0, 2.0 ** (failures - 1))
        assert min(draws) >= 0.0 and max(draws) <= cap and max(draws) > 0.5 * cap


class Unreachable(httpx.AsyncBaseTransport):
    """Hands the first ``after`` requests to ``inner``, refuses the next ``failures`` connections, then hands
    requests to ``inner`` again."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: int, after: int = 0) -> None:
        self.inner, self.failures, self.after, self.attempts = inner, failures, after, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.after < self.attempts <= self.after + self.failures:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


DISCOVERY_REQUESTS = 2  # GET /v1/model, GET /v2/models/NAME


def test_connection_errors_are_retried_then_reported(fake_server: Factory) -> None:
    transport, _ = fake_server()
    flaky = Unreachable(transport, failures=2, after=DISCOVERY_REQUESTS)
    rows, client = predict(flaky, images(), retry=FAST_RETRY)
    assert len(rows) == 6 and client.stats.retries == 2

    down = Unreachable(transport, failures=10**6, after=DISCOVERY_REQUESTS)
    with pytest.raises(ServerUnavailable, match="ConnectError"):
        predict(down, images(), retry=FAST_RETRY)
    assert down.attempts == DISCOVERY_REQUESTS + FAST_RETRY.attempts


def test_no_server_at_the_url_fails_at_once(fake_server: Factory) -> None:
    """Discovery does not retry a refused connection: a wrong URL or a stopped server is one line, at once."""
    transport, _ = fake_server()
    nobody = Unreachable(transport, failures=10**6)
    with pytest.raises(ServerUnavailable, match=r"cannot connect to http://fake \(ConnectError: connection refused\): "
                                                r"is the server running, and is the URL right\?"):
        predict(nobody, images(), retry=FAST_RETRY)
    assert nobody.attempts == 1


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v2/", "https://host/api/v1"])
def test_a_url_with_the_route_prefix_says_drop_it(url: str) -> None:
    route = "/v1" if "v1" in url else "/v2"
    with pytest.raises(ValueError, match=f"ends in {route}: drop {route} "):
        TeacherClient(url)


def test_429_waits_the_retry_after_seconds(fake_server: Factory) -> None:
    transport, knobs = fake_server()
    sleeps = Sleeps()
    knobs.rate_limit_first, knobs.retry_after = 2, "3"
    rows, client = predict(transport, images(), retry=FAST_RETRY, sleep=sleeps)
    assert len(rows) == 6 and client.stats.rate_limited == 2
    assert len(sleeps.waits) == 2 and all(3.0 <= wait <= 3.0 + FAST_RETRY.base_delay for wait in sleeps.waits)


def test_429_with_a_real_one_second_wait(fake_server: Factory) -> None:
    transport, knobs = fake_server()
    knobs.rate_limit_first = 1
    began = time.monotonic()
    rows, _ = predict(transport, images(), retry=FAST_RETRY)
    assert len(rows) == 6
    assert time.monotonic() - began >= 1.0


def test_429_asking_too_long_a_wait_stops(fake_server: Factory) -> None:
    transport, knobs = fake_server()
    knobs.rate_limit_first, knobs.retry_after = 1, "3600"
    with pytest.raises(RateLimited, match="3600"):
        predict(transport, images(), retry=FAST_RETRY, sleep=Sleeps())


def test_refusals_are_distinct_and_not_retried(fake_server: Factory) -> None:
    transport, knobs = fake_server(api_key="secret")
    with pytest.raises(Unauthorized):
        predict(transport, images())
    rows, _ = predict(transport, images(), api_key="secret")
    assert len(rows) == 6

    transport, knobs = fake_server(budget=4)
    with pytest.raises(BudgetExhausted):
        predict(transport, images(6))
    assert knobs.budget == 4  # refused whole, nothing counted
    _, client = predict(transport, images(3))
    assert client.budget_remaining == 1

    transport, knobs = fake_server(max_batch=2)
    with pytest.raises(PayloadTooLarge):
        predict(transport, images(3))
    assert knobs.requests == 1


def test_released_row_drops_masked_values_and_rejects_nonsense() -> None:
    row = released_row([4, 1, 7], [2.0, 5.5, -3.4028235e38])
    assert row == TopN((1, 4), (5.5, 2.0))
    assert released_row([0, 3], [1.0, None]).classes == (0,)
    assert released_row([2, 1], [float("-inf"), 0.5]).classes == (1,)
    for classes, logits in (([1, 1], [1.0, 0.0]), ([1], [math.nan]), ([1], [math.inf]), ([-1], [1.0]), (["a"], [1.0]),
                            ([1], [None]), ([1], ["2.0"])):
        with pytest.raises(ProtocolError):
            released_row(classes, logits)
    float32 = float(torch.tensor(0.1, dtype=torch.float32))  # 0.10000000149011612
    stored = released_row([0], [float32]).logits[0]
    assert stored == 0.100000001 and float(torch.tensor(stored, dtype=torch.float32)) == float32  # 9 digits round-trip
