"""The paper's logit manipulations: Stingy Teacher (Eq. 6) and the ablations of Sec. 4.2 and 4.4.

``M`` is the kept set of ``N`` classes. All four keep the teacher's top-1 class at its own logit, so
the released argmax is the teacher's (ties broken by lower class index).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from defense.base import Disclosure, LogitPolicy, MaskingTopNPolicy, SparseLogits, TopNPolicy, check_logits
from defense.ranking import ascending_order, descending_order, mask_from_indices


@dataclass(frozen=True)
class Normal(LogitPolicy):
    """The identity: ``z' = z``. The unprotected teacher."""

    name = "normal"

    def release(self, logits: Tensor) -> Tensor:
        return logits


@dataclass(frozen=True)
class Stingy(MaskingTopNPolicy):
    """Stingy Teacher, Eq. 6: ``z'_k = z_k`` for the top-``N`` classes ``k in M``, ``-inf`` otherwise."""

    name = "stingy"
    kept_classes = "the top N"

    def release(self, logits: Tensor) -> Tensor:
        kept = descending_order(logits)[:, : self.keep_count(logits.shape[-1])]
        return logits.masked_fill(~mask_from_indices(kept, logits.shape[-1]), float("-inf"))

    def sparse(self, logits: Tensor) -> SparseLogits:
        """The top-``N`` pairs from one sort of the logits: the pairs of the generic form (which builds the dense
        release and sorts twice), at half its cost on the serving path."""
        check_logits(logits)
        order = descending_order(logits)[:, : self.keep_count(logits.shape[-1])]
        return SparseLogits(indices=order, values=logits.gather(1, order))


@dataclass(frozen=True)
class Least(MaskingTopNPolicy):
    """"Least logits", Sec. 4.4: the top-1 class plus the ``N - 1`` smallest logits; others ``-inf``."""

    name = "least"
    kept_classes = "the top-1 and the N - 1 smallest"

    def release(self, logits: Tensor) -> Tensor:
        num_classes = logits.shape[-1]
        top1 = descending_order(logits)[:, :1]
        # Rank the classes from smallest up, with the top-1 class pushed to the very end.
        others_first = ascending_order(logits.masked_fill(mask_from_indices(top1, num_classes), float("inf")))
        kept = torch.cat([top1, others_first[:, : self.keep_count(num_classes) - 1]], dim=1)
        return logits.masked_fill(~mask_from_indices(kept, num_classes), float("-inf"))


@dataclass(frozen=True)
class StingySmooth(TopNPolicy):
    """"Stingy - smooth", Sec. 4.2: the top-``N`` logits kept, every other logit replaced by their
    mean ``(1 / (K - N)) sum_{j not in M} z_j``. As stingy as Eq. 6 but not sparse."""

    name = "stingy_smooth"

    def partial_disclosure(self, n: int, num_classes: int) -> Disclosure:
        return Disclosure(f"the raw logits of the top {n} of {num_classes} classes and, in place of each of the other "
                          f"{num_classes - n}, the mean of their raw logits", withholds=False)

    def release(self, logits: Tensor) -> Tensor:
        num_classes = logits.shape[-1]
        kept = mask_from_indices(descending_order(logits)[:, : self.keep_count(num_classes)], num_classes)
        if bool(kept.all()):
            return logits
        wide = logits.double()
        others = wide.masked_fill(kept, 0.0)
        # The mean of values scaled into [-1, 1], scaled back: no overflow even for logits near the dtype's max.
        scale = others.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        mean = (others / scale).sum(dim=-1, keepdim=True) / (~kept).sum(dim=-1, keepdim=True) * scale
        # Rounding must never lift the mean above the largest replaced logit.
        largest_other = wide.masked_fill(kept, float("-inf")).amax(dim=-1, keepdim=True)
        smoothed = torch.minimum(mean, largest_other).to(logits.dtype)
        return torch.where(kept, logits, smoothed)


@dataclass(frozen=True)
class Reverse(LogitPolicy):
    """"Reverse", Sec. 4.2: the top-1 logit kept, the order of the other ``K - 1`` reversed: the class
    ranked 2nd gets the smallest logit, the one ranked last gets the 2nd largest, and so on."""

    name = "reverse"

    def describe_release(self) -> str:
        return "the raw logits, the top-1 in place and the others reassigned in reverse rank order (exactly invertible),"

    def release(self, logits: Tensor) -> Tensor:
        order = descending_order(logits)
        ranked = logits.gather(1, order)
        top1, others = order[:, :1], order[:, 1:]
        reversed_values = ranked[:, 1:].flip(1)
        released = logits.scatter(1, others, reversed_values)
        return keep_top1_strict(released, top1)


def keep_top1_strict(released: Tensor, top1: Tensor) -> Tensor:
    """Make ``top1`` ([B, 1]) the released argmax even under ties.

    A class with a lower index than the top-1 class whose released value reaches the top-1 value is
    lowered to the next representable value below it, so the first-maximum rule picks ``top1``.
    """
    top_value = released.gather(1, top1)
    index = torch.arange(released.shape[-1], device=released.device).expand_as(released)
    steals = (released >= top_value) & (index < top1)
    if not bool(steals.any()):
        return released
    below = torch.nextafter(top_value, torch.full_like(top_value, float("-inf")))
    return torch.where(steals, below.expand_as(released), released)
