"""Dynamic batching: concurrent requests merge into shared forward passes and each gets exactly its rows."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.batcher import BatcherClosed, DynamicBatcher, QueueFull
from app.runner import ModelRunner
from defense import SparseLogits, make_policy
from tests.api.conftest import Reference, make_settings, random_images, running_app

T = TypeVar("T")
STINGY = make_policy("stingy", sparse_ratio=0.3)


def test_64_concurrent_requests_of_mixed_sizes_each_get_their_own_forward(tiny_teacher: Path, tmp_path: Path,
                                                                          reference: Reference) -> None:
    """Every answer matches the in-process teacher run on that request's images alone: the same classes in
    the same order, and the same values up to float rounding (a row's logits can differ in the last bits
    with the batch it was computed in). Seeded images are all distinct, so any mix-up between requests shows."""
    sizes = [1 + (i * 7) % 5 for i in range(64)]
    batches = [random_images(size, seed=100 + i) for i, size in enumerate(sizes)]

    def request(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        images = batches[i]
        if i % 2:
            return client.post("/v1/predict", json={"pixels": images.tolist()})
        tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.reshape(-1).tolist()}
        return client.post("/v2/models/teacher/infer", json={"inputs": [tensor], "outputs": [{"name": "topk_indices"}, {"name": "topk_logits"}]})

    async def burst(client: httpx.AsyncClient) -> list[httpx.Response]:
        return await asyncio.gather(*(request(client, i) for i in range(64)))

    settings = make_settings(tiny_teacher, tmp_path, policy="stingy", sparse_ratio=0.3, max_batch_size=32, max_delay_ms=50)
    with running_app(settings) as client:
        responses = client.run(burst)
        metrics = client.get("/metrics").text
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        expected = reference.released(batches[i], STINGY)
        if i % 2:
            rows = response.json()["predictions"]
            indices = torch.tensor([[entry["class"] for entry in row["top"]] for row in rows])
            values = torch.tensor([[entry["logit"] for entry in row["top"]] for row in rows])
            assert [row["label"] for row in rows] == expected.indices[:, 0].tolist()
        else:
            outputs = {output["name"]: output for output in response.json()["outputs"]}
            indices = torch.tensor(outputs["topk_indices"]["data"]).reshape(outputs["topk_indices"]["shape"])
            values = torch.tensor(outputs["topk_logits"]["data"]).reshape(outputs["topk_logits"]["shape"])
        assert torch.equal(indices, expected.indices), i
        torch.testing.assert_close(values, expected.values, rtol=1e-5, atol=1e-6)
    batch_sizes = {sample.name: sample.value for family in text_string_to_metric_families(metrics)
                   if family.name == "stingy_batch_size_images" for sample in family.samples}
    passes = batch_sizes["stingy_batch_size_images_count"]
    assert batch_sizes["stingy_batch_size_images_sum"] == sum(sizes)
    assert passes < 64 / 2, f"{passes} forward passes for 64 concurrent requests: batching did not merge"


# ---- the batcher alone, with a forward pass that echoes image ids ------------------------------------------

class EchoForward:
    """A forward pass whose "released class" of each image is the image's id; records the pass sizes."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.passes: list[list[int]] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, parts: list[torch.Tensor]) -> SparseLogits:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.passes.append([len(part) for part in parts])
        ids = torch.cat(parts).reshape(-1, 1).long()
        return SparseLogits(indices=ids, values=ids.float())


def ids(start: int, count: int) -> torch.Tensor:
    return torch.arange(start, start + count).reshape(count, 1)


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout=20)

    return asyncio.run(bounded())


def test_a_pass_mixing_uint8_and_float_requests_gives_each_its_own_rows(tiny_teacher: Path, reference: Reference) -> None:
    """The runner concatenates a pass's parts before normalising them only when they share a dtype: uint8
    0-255 and float32 0-1 pixels of the same images must give the same released pairs in one pass."""
    runner = ModelRunner(tiny_teacher, STINGY, device="cpu")
    pixels = [random_images(2, seed=7), random_images(3, seed=8), random_images(1, seed=9)]
    parts = [pixels[0], pixels[1].float() / 255, pixels[2]]
    released = runner.forward(parts)
    expected = [reference.released(images, STINGY) for images in pixels]
    assert torch.equal(released.indices, torch.cat([rows.indices for rows in expected]))
    torch.testing.assert_close(released.values, torch.cat([rows.values for rows in expected]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("merge", [True, False])
def test_each_request_gets_exactly_its_rows(merge: bool) -> None:
    forward = EchoForward()
    sizes = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]

    async def scenario() -> list[SparseLogits]:
        batcher = DynamicBatcher(forward, max_batch_size=8, max_delay_s=0.05, merge=merge)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(ids(start, size)) for start, size in zip(starts, sizes)))
        await batcher.stop()
        return results

    for result, start, size in zip(run(scenario()), starts, sizes):
        assert result.indices.reshape(-1).tolist() == list(range(start, start + size))
    if merge:
        assert len(forward.passes) < len(sizes)
        assert all(sum(p) <= 8 or len(p) == 1 for p in forward.passes)  # only a lone oversize request passes 8
        assert [9] in forward.passes
    else:
        assert forward.passes == [[size] for size in sizes]


def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    forward = EchoForward()

    async def scenario() -> float:
        batcher = DynamicBatcher(forward, max_batch_size=4, max_delay_s=30.0)
        batcher.start()
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.gather(*(batcher.submit(ids(i, 1)) for i in range(4)))
        elapsed = loop.time() - began
        await batcher.stop()
        return elapsed

    assert run(scenario()) < 5.0
    assert forward.passes == [[1, 1, 1, 1]]


def test_requests_queue_while_a_pass_runs_and_stop_drains_them() -> None:
    gate = threading.Event()
    forward = EchoForward(gate)

    async def scenario() -> tuple[int, list[SparseLogits]]:
        batcher = DynamicBatcher(forward, max_batch_size=16, max_delay_s=0.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(ids(0, 2)))
        assert await asyncio.get_running_loop().run_in_executor(None, forward.entered.wait, 10)  # the first pass is running
        others = [asyncio.ensure_future(batcher.submit(ids(10 * i, 3))) for i in range(1, 4)]
        await asyncio.sleep(0)  # let the three submissions enqueue
        queued = batcher.queued_images
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0)
        with pytest.raises(BatcherClosed):
            await batcher.submit(ids(99, 1))
        gate.set()
        results = await asyncio.gather(first, *others)
        await stopping
        return queued, results

    queued, results = run(scenario())
    assert queued == 9
    assert [r.indices.reshape(-1).tolist() for r in results] == [[0, 1], [10, 11, 12], [20, 21, 22], [30, 31, 32]]
    assert forward.passes == [[2], [3, 3, 3]]


def test_a_failing_pass_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls = []

    def flaky(parts: list[torch.Tensor]) -> SparseLogits:
        calls.append(len(parts))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return EchoForward()(parts)

    async def scenario() -> SparseLogits:
        batcher = DynamicBatcher(flaky, max_batch_size=8, max_delay_s=0.05)
        batcher.start()
        failed = await asyncio.gather(batcher.submit(ids(0, 1)), batcher.submit(ids(1, 1)), return_exceptions=True)
        assert [type(error) for error in failed] == [RuntimeError, RuntimeError]
        result = await batcher.submit(ids(5, 2))
        await batcher.stop()
        return result

    assert run(scenario()).indices.reshape(-1).tolist() == [5, 6]


# ---- load shedding: a bounded queue, and 503 with Retry-After past it ---------------------------------------

def test_a_full_queue_refuses_at_once_and_an_empty_one_takes_any_request() -> None:
    gate = threading.Event()
    forward = EchoForward(gate)

    async def scenario() -> tuple[list[SparseLogits], QueueFull]:
        batcher = DynamicBatcher(forward, max_batch_size=4, max_delay_s=0.0, max_queue_images=3)
        batcher.start()
        oversize = asyncio.ensure_future(batcher.submit(ids(0, 5)))  # more than the limit: taken, as the queue is empty
        assert await asyncio.get_running_loop().run_in_executor(None, forward.entered.wait, 10)
        queued = [asyncio.ensure_future(batcher.submit(ids(10 + i, 1))) for i in range(3)]
        await asyncio.sleep(0)
        assert batcher.queued_images == 3 and not batcher.has_room(1)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(ids(99, 1))
        assert batcher.queued_images == 3  # nothing of the refused request was queued
        gate.set()
        results = await asyncio.gather(oversize, *queued)
        await batcher.stop()
        return results, refused.value

    results, refused = run(scenario())
    assert [r.indices.reshape(-1).tolist() for r in results] == [[0, 1, 2, 3, 4], [10], [11], [12]]
    assert (refused.queued, refused.requested, refused.limit) == (3, 1, "its limit of 3 images")
    assert forward.passes == [[5], [1, 1, 1]]


def test_the_queue_refuses_past_its_seconds_of_work_at_the_learnt_rate() -> None:
    """With no rate learnt only the image limit (none here) applies; at a learnt 0.1 s per image a queue bounded
    at 0.5 s of work takes a 5th queued image and refuses a 6th; the passes that follow feed the average."""
    gate = threading.Event()
    forward = EchoForward(gate)

    async def scenario() -> tuple[list[SparseLogits], QueueFull, DynamicBatcher]:
        batcher = DynamicBatcher(forward, max_batch_size=64, max_delay_s=0.0, max_queue_wait_s=0.5)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(ids(0, 1)))
        assert await asyncio.get_running_loop().run_in_executor(None, forward.entered.wait, 10)
        queued = [asyncio.ensure_future(batcher.submit(ids(10 + i, 1))) for i in range(4)]
        await asyncio.sleep(0)
        assert batcher.queued_images == 4 and batcher.has_room(10_000)  # no rate yet: no bound in seconds
        batcher.learn_rate(10, 1.0)
        assert batcher.has_room(1) and not batcher.has_room(2)
        queued.append(asyncio.ensure_future(batcher.submit(ids(14, 1))))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(ids(99, 1))
        gate.set()
        results = await asyncio.gather(running, *queued)
        await batcher.stop()
        return results, refused.value, batcher

    results, refused, batcher = run(scenario())
    assert [r.indices.reshape(-1).tolist() for r in results] == [[0], [10], [11], [12], [13], [14]]
    assert (refused.queued, refused.requested) == (5, 1)
    assert str(refused) == "the queue holds 5 images; 1 more would pass its limit of 0.5 s of work at 10 images/s"
    assert batcher.seconds_per_image is not None and batcher.seconds_per_image < 0.1  # the fast passes pulled it down


def test_seconds_per_image_is_a_moving_average_of_the_passes() -> None:
    batcher = DynamicBatcher(EchoForward(), max_batch_size=4, max_delay_s=0.0)
    assert batcher.seconds_per_image is None
    batcher.learn_rate(10, 1.0)
    assert batcher.seconds_per_image == pytest.approx(0.1)
    batcher.learn_rate(10, 2.0)
    assert batcher.seconds_per_image == pytest.approx(0.8 * 0.1 + 0.2 * 0.2)


def test_the_server_sheds_load_with_503_and_retry_after_and_counts_nothing(
        tiny_teacher: Path, tmp_path: Path, reference: Reference, monkeypatch: pytest.MonkeyPatch) -> None:
    """One request holds the (gated) forward pass, four fill a queue of four images; the next one gets 503
    ``overloaded`` with ``Retry-After`` at once, its budget untouched; the queued ones then get their answers."""
    gate = threading.Event()
    gate.set()  # open for the warm-up pass
    entered = threading.Event()
    forward = ModelRunner.forward

    def gated(self: ModelRunner, parts: list[torch.Tensor]) -> SparseLogits:
        entered.set()
        assert gate.wait(20)
        return forward(self, parts)

    monkeypatch.setattr(ModelRunner, "forward", gated)
    settings = make_settings(tiny_teacher, tmp_path, policy="stingy", sparse_ratio=0.3, max_batch_size=8, max_delay_ms=0,
                             max_queue_images=4, budget_images=100)
    images = [random_images(1, seed=300 + i) for i in range(6)]

    def body(i: int) -> dict[str, object]:
        return {"inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": images[i].reshape(-1).tolist()}]}

    async def overload(client: httpx.AsyncClient) -> tuple[list[httpx.Response], httpx.Response]:
        gate.clear()
        entered.clear()
        post = lambda i: client.post("/v2/models/teacher/infer", json=body(i))  # noqa: E731
        first = asyncio.ensure_future(post(0))
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        queued = [asyncio.ensure_future(post(i)) for i in range(1, 5)]
        while service.batcher.queued_images < 4:
            await asyncio.sleep(0.01)
        refused = await asyncio.wait_for(post(5), 5)  # at once, not after the queue
        gate.set()
        return await asyncio.gather(first, *queued), refused

    with running_app(settings) as client:
        service = client.service
        assert service.batcher is not None and service.batcher.seconds_per_image is not None  # seeded by the warm-up
        answered, refused = client.run(overload)
        metrics = client.get("/metrics").text
        remaining = client.get("/v1/model").headers["X-Budget-Remaining"]
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "overloaded" and refused.headers["Retry-After"] == "1"
    for i, response in enumerate(answered):
        assert response.status_code == 200, response.text
        outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
        assert outputs["topk_indices"] == reference.released(images[i], STINGY).indices.reshape(-1).tolist()
    assert remaining == str(100 - 5)  # the refused request was never counted
    shed = [sample.value for family in text_string_to_metric_families(metrics) if family.name == "stingy_shed_requests"
            for sample in family.samples if sample.name == "stingy_shed_requests_total"]
    assert shed == [1.0]

