"""Deterministic class rankings shared by every policy.

Ties are broken by class index: among equal logits the lower index ranks first. This is the
order ``torch.argmax`` uses (first maximal index), so "the top-1 class" means the same thing for
the teacher, every policy and every test.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def descending_order(logits: Tensor) -> Tensor:
    """Class indices ``[B, K]`` from the largest logit to the smallest, ties by lower index."""
    return torch.sort(logits, dim=-1, descending=True, stable=True).indices


def ascending_order(logits: Tensor) -> Tensor:
    """Class indices ``[B, K]`` from the smallest logit to the largest, ties by lower index."""
    return torch.sort(logits, dim=-1, descending=False, stable=True).indices


def mask_from_indices(indices: Tensor, num_classes: int) -> Tensor:
    """Boolean ``[B, K]`` mask that is True at the given ``[B, N]`` class indices."""
    mask = torch.zeros(indices.shape[0], num_classes, dtype=torch.bool, device=indices.device)
    return mask.scatter_(1, indices, True)


def count_from_ratio(sparse_ratio: float, num_classes: int) -> int:
    """Number of kept classes ``N = max(1, round(r * K))``, rounding halves up, capped at ``K``."""
    if not 0.0 < sparse_ratio <= 1.0:
        raise ValueError(f"sparse_ratio must be in (0, 1], got {sparse_ratio}")
    return min(num_classes, max(1, math.floor(sparse_ratio * num_classes + 0.5)))
