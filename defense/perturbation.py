"""Output-perturbation baselines from the model-stealing literature.

They act on probabilities ``p = softmax(z)`` and release ``log p'``, so ``softmax(released / tau)`` is the
distribution a student sees (``p'`` itself at ``tau = 1``). Computation is in float32 (float64 kept).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field

import torch
from torch import Tensor

from defense.base import Disclosure, LogitPolicy
from defense.ranking import descending_order, mask_from_indices
from defense.softmax import tempered_softmax
from defense.sparse import keep_top1_strict


def _release_log_probs(probs: Tensor, dtype: torch.dtype) -> Tensor:
    """``log p`` in the caller's dtype; zero probabilities become ``-inf``."""
    return probs.clamp_min(0.0).log().to(dtype)


@dataclass(frozen=True)
class LabelOnly(LogitPolicy):
    """Top-1 label only: ``p' = onehot(argmax z)``, released as ``0`` for the top-1 class, ``-inf`` else."""

    name = "label_only"

    @property
    def masks(self) -> bool:
        return True

    def released_count(self, num_classes: int) -> int:
        return 1

    def disclosure(self, num_classes: int) -> Disclosure:
        return Disclosure(f"the top-1 class of {num_classes} (its value is always 0); nothing of the others", withholds=True)

    def release(self, logits: Tensor) -> Tensor:
        top1 = mask_from_indices(descending_order(logits)[:, :1], logits.shape[-1])
        return torch.zeros_like(logits).masked_fill(~top1, float("-inf"))


@dataclass(frozen=True)
class Rounding(LogitPolicy):
    """Probabilities rounded to ``decimals`` places: ``p' = round(p, d)`` (then ``log p'``).

    Classes that round to 0 are released as ``-inf``. The top-1 class keeps at least ``10^-d`` and stays
    the argmax even where rounding ties it with another class.
    """

    name = "rounding"
    decimals: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.decimals, bool) or not isinstance(self.decimals, int) or not 0 <= self.decimals <= 8:
            raise ValueError(f"decimals must be an integer in [0, 8], got {self.decimals!r}")

    def describe_release(self) -> str:
        return f"the log of each probability rounded to {self.decimals} decimals (the raw logits up to a shift, quantised)"

    def release(self, logits: Tensor) -> Tensor:
        probs = tempered_softmax(logits)
        rounded = torch.round(probs, decimals=self.decimals)
        top1 = descending_order(logits)[:, :1]
        floor = torch.full_like(rounded[:, :1], 10.0 ** (-self.decimals))
        rounded = rounded.scatter(1, top1, torch.maximum(rounded.gather(1, top1), floor))
        return keep_top1_strict(_release_log_probs(rounded, logits.dtype), top1)


@dataclass(frozen=True)
class GaussianNoise(LogitPolicy):
    """Additive noise on probabilities: ``p' = normalise(max(p + e, 0))``, ``e ~ N(0, sigma^2)``.

    The top-1 class may change (that is the point of the baseline). Noise is fresh on every call. Without a
    ``seed`` every call seeds its generator with 63 bits from the operating system (``secrets``), so the
    noise can be neither replayed nor predicted from earlier answers; a policy built with a ``seed`` draws
    one reproducible sequence (for experiments), which anyone who learns the seed can subtract.
    """

    name = "gaussian_noise"
    preserves_argmax = False
    secret_parameters = ("seed",)
    sigma: float = 0.1
    seed: int | None = None
    _generator: dict[str, torch.Generator] = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sigma >= 0.0:
            raise ValueError(f"sigma must be non-negative, got {self.sigma!r}")

    @property
    def replayable(self) -> bool:
        return self.seed is not None

    def describe_release(self) -> str:
        source = "from a fixed seed: replayable by whoever learns it" if self.seed is not None else "fresh from the operating system on every call"
        return f"the log of each probability plus Gaussian noise (sigma {self.sigma}, {source})"

    def _noise_like(self, probs: Tensor) -> Tensor:
        if self.seed is None:
            generator = torch.Generator(device=probs.device).manual_seed(secrets.randbits(63))
            return torch.randn(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        key = str(probs.device)
        with self._lock:
            generator = self._generator.get(key)
            if generator is None:
                generator = self._generator[key] = torch.Generator(device=probs.device).manual_seed(self.seed)
            return torch.randn(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)

    def release(self, logits: Tensor) -> Tensor:
        probs = tempered_softmax(logits)
        noisy = (probs + self.sigma * self._noise_like(probs)).clamp_min(0.0)
        # A row the noise wiped out entirely falls back to the clean probabilities.
        empty = noisy.sum(dim=-1, keepdim=True) <= 0
        noisy = torch.where(empty, probs, noisy)
        return _release_log_probs(noisy / noisy.sum(dim=-1, keepdim=True), logits.dtype)


@dataclass(frozen=True)
class ReverseSigmoid(LogitPolicy):
    """Reverse sigmoid (Lee et al. 2018): ``p' = normalise(clip(p - beta * (s(gamma * s^-1(p)) - 1/2), 0, 1))``
    with ``s`` the sigmoid and ``s^-1(p) = log(p / (1 - p))``; ``p`` is clipped to ``[1e-9, 1 - 1e-9]``.

    Large ``beta`` can reorder classes, so the top-1 class is not guaranteed.
    """

    name = "reverse_sigmoid"
    preserves_argmax = False
    beta: float = 1.0
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if not self.beta >= 0.0 or not self.gamma > 0.0:
            raise ValueError(f"need beta >= 0 and gamma > 0, got beta={self.beta!r}, gamma={self.gamma!r}")

    def describe_release(self) -> str:
        return f"the log of each probability after the reverse-sigmoid perturbation (beta {self.beta}, gamma {self.gamma})"

    def release(self, logits: Tensor) -> Tensor:
        probs = tempered_softmax(logits)
        clipped = probs.clamp(1e-9, 1.0 - 1e-9)
        perturbation = self.beta * (torch.sigmoid(self.gamma * torch.logit(clipped)) - 0.5)
        perturbed = (probs - perturbation).clamp(0.0, 1.0)
        empty = perturbed.sum(dim=-1, keepdim=True) <= 0
        perturbed = torch.where(empty, probs, perturbed)
        return _release_log_probs(perturbed / perturbed.sum(dim=-1, keepdim=True), logits.dtype)
