"""The in-process ceiling of a served model: what :meth:`app.runner.ModelRunner.forward` (normalise, forward,
release policy) does on ready ``uint8`` batches with no HTTP at all, and the policy's share of it.

    ceiling = images in the timed passes / their seconds, for one batch size (wall seconds, and CPU seconds)
    policy share = seconds of ``runner.release(logits)`` (the logits' copy to the CPU and the policy there)
                   / seconds of ``model(x)``, at one batch size
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from app.runner import ModelRunner
from defense import make_policy
from training.checkpoint import ModelCard, save_checkpoint
from training.data import normalize
from training.models import create_model


def random_checkpoint(folder: Path, arch: str, channels: int, image_size: int, classes: int) -> Path:
    """A checkpoint of ``arch`` with random weights (throughput does not depend on what the weights are)."""
    torch.manual_seed(0)
    model = create_model(arch, classes, channels, image_size)
    card = ModelCard(arch=arch, num_classes=classes, in_channels=channels, image_size=image_size, mean=(0.5,) * channels,
                     std=(0.25,) * channels, class_names=tuple(f"class_{i}" for i in range(classes)), dataset="random")
    path = folder / f"{arch}.safetensors"
    save_checkpoint(path, model, card)
    return path


def _seconds_per_call(function: Callable[[], object], seconds: float) -> tuple[float, float]:
    """Mean wall seconds and mean CPU seconds (this process, all threads) of ``function()`` over at least
    ``seconds`` (after two untimed calls), at least 3 calls."""
    function()
    function()
    calls, began, cpu = 0, time.perf_counter(), time.process_time()
    while calls < 3 or time.perf_counter() - began < seconds:
        function()
        calls += 1
    return (time.perf_counter() - began) / calls, (time.process_time() - cpu) / calls


@dataclass(frozen=True)
class Ceiling:
    """Images per second of the whole forward (model and policy) by batch size, per wall second and per CPU
    second (which a busy machine disturbs less), and the policy's share."""

    images_per_s: dict[int, float]
    images_per_cpu_s: dict[int, float]
    policy_batch: int
    forward_ms: float
    policy_ms: float

    @property
    def policy_share(self) -> float:
        return self.policy_ms / self.forward_ms

    def best(self, other: Ceiling) -> Ceiling:
        """Per batch size the higher rate, and the faster forward with its policy time, of two measurements of
        one model (at two thread counts, or before and after a load test: the higher one is nearer the truth)."""
        rates = {batch: max(rate, other.images_per_s[batch]) for batch, rate in self.images_per_s.items()}
        cpu_rates = {batch: max(rate, other.images_per_cpu_s[batch]) for batch, rate in self.images_per_cpu_s.items()}
        faster = self if self.forward_ms <= other.forward_ms else other
        return Ceiling(rates, cpu_rates, self.policy_batch, faster.forward_ms, faster.policy_ms)


def measure_ceiling(checkpoint: Path, batch_sizes: tuple[int, ...], policy_batch: int, seconds: float, *,
                    device: str = "cpu", policy: str = "stingy", sparse_ratio: float = 0.2) -> Ceiling:
    """The better (per batch size) of :func:`measure_ceiling_with` at torch's default number of CPU threads and,
    where that is more than one, at one thread: on a busy machine a multi-threaded forward can wait far longer
    for its threads to be scheduled together than it gains from them, and on a GPU the CPU's part (joining the
    batch, the policy) is too small to share out; the ceiling is the model's best."""
    default = torch.get_num_threads()
    ceiling = measure_ceiling_with(checkpoint, batch_sizes, policy_batch, seconds, device=device, policy=policy,
                                   sparse_ratio=sparse_ratio)
    if default > 1:
        torch.set_num_threads(1)
        try:
            ceiling = ceiling.best(measure_ceiling_with(checkpoint, batch_sizes, policy_batch, seconds, device=device,
                                                        policy=policy, sparse_ratio=sparse_ratio))
        finally:
            torch.set_num_threads(default)
    return ceiling


def measure_ceiling_with(checkpoint: Path, batch_sizes: tuple[int, ...], policy_batch: int, seconds: float, *,
                         device: str = "cpu", policy: str = "stingy", sparse_ratio: float = 0.2) -> Ceiling:
    """Time :meth:`ModelRunner.forward` (the server's own code path, its answer copied back to the CPU) for each
    batch size, and the model alone against the policy alone at ``policy_batch``, each for about ``seconds``,
    at the current number of torch threads."""
    runner = ModelRunner(checkpoint, make_policy(policy, sparse_ratio=sparse_ratio), device=device,
                         max_batch_size=max(batch_sizes))
    generator = torch.Generator().manual_seed(0)
    rates, cpu_rates = {}, {}
    for batch in batch_sizes:
        images = torch.randint(0, 256, (batch, *runner.spec.shape), dtype=torch.uint8, generator=generator)
        wall, cpu = _seconds_per_call(lambda: runner.forward([images]), seconds)
        rates[batch], cpu_rates[batch] = batch / wall, batch / cpu
    card = runner.card
    images = torch.randint(0, 256, (policy_batch, *runner.spec.shape), dtype=torch.uint8, generator=generator)
    synchronize = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        x = normalize(images, card.mean, card.std).to(runner.device)
        logits = runner.model(x).float()
        forward, _ = _seconds_per_call(lambda: (runner.model(x), synchronize()), seconds)
        policy_seconds, _ = _seconds_per_call(lambda: runner.release(logits), seconds / 4)
    return Ceiling(rates, cpu_rates, policy_batch, 1000 * forward, 1000 * policy_seconds)
