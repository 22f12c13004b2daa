"""The paper's analysis of sparse soft targets (Sec. 3.2, Eq. 3-5 and Appendix A1, Eq. A1-A8).

Notation: ``K`` classes, kept set ``M`` of ``N`` classes, sparse ratio ``r = N / K``, teacher soft
probabilities ``p = p_tau^T`` and the sparse target ``p~(k) = p(k) + delta(k)`` on ``M``, 0 elsewhere.
Exact quantities take tensors (rows are samples); the paper's approximations take scalars.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_approximation(num_classes: int, top1: int, epsilon: float) -> Tensor:
    """Eq. 3 / A1: ``p(k) = 1/K - eps`` for ``k != j`` and ``1/K + eps (K - 1)`` for the top-1 class ``j``."""
    if not 0.0 <= epsilon < 1.0 / num_classes:
        raise ValueError(f"epsilon must be in [0, 1/K), got {epsilon}")
    probs = torch.full((num_classes,), 1.0 / num_classes - epsilon, dtype=torch.float64)
    probs[top1] = 1.0 / num_classes + epsilon * (num_classes - 1)
    return probs


def discarded_mass(probs: Tensor, kept: Tensor) -> Tensor:
    """Eq. A3, exact: ``P1 = sum_{k not in M} p(k)``. ``kept`` is a boolean mask like ``probs``."""
    return probs.masked_fill(kept, 0.0).sum(dim=-1)


def preserved_mass(probs: Tensor, kept: Tensor) -> Tensor:
    """Eq. A4, exact: ``P2 = sum_{k in M} p(k) = 1 - P1``."""
    return probs.masked_fill(~kept, 0.0).sum(dim=-1)


def renormalisation_residual(probs: Tensor, kept: Tensor) -> Tensor:
    """Eq. A5, exact: ``delta(k) = p(k) P1 / P2`` for ``k in M``, 0 elsewhere.

    ``p + delta`` on ``M`` is then ``p / P2``: the teacher's distribution renormalised over ``M``, which
    is what ``softmax`` of stingy logits (Eq. 6) gives.
    """
    ratio = (discarded_mass(probs, kept) / preserved_mass(probs, kept)).unsqueeze(-1)
    return (probs * ratio).masked_fill(~kept, 0.0)


def approximate_discarded_mass(sparse_ratio: float, num_classes: int, epsilon: float = 0.0) -> float:
    """Eq. A3 under Eq. 3: ``P1 = (1 - eps K)(1 - r)``."""
    return (1.0 - epsilon * num_classes) * (1.0 - sparse_ratio)


def approximate_residual(sparse_ratio: float, num_classes: int) -> float:
    """Eq. A7 / A8: ``delta(k) ~ (1 - r) / (r K)`` for every ``k in M``."""
    return (1.0 - sparse_ratio) / (sparse_ratio * num_classes)


def sparse_cross_entropy(sparse_target: Tensor, student_log_probs: Tensor) -> Tensor:
    """Eq. 4, first line: ``-sum_k p~(k) log p_tau^S(k)`` (the KL term without the target's entropy)."""
    terms = sparse_target * student_log_probs
    return -torch.where(sparse_target > 0, terms, torch.zeros_like(terms)).sum(dim=-1)


def approximate_sparse_cross_entropy(student_log_probs: Tensor, kept: Tensor, sparse_ratio: float) -> Tensor:
    """Eq. 4, last line: ``-(1 / (r K)) sum_{k in M} log p_tau^S(k)``."""
    num_classes = student_log_probs.shape[-1]
    inside = student_log_probs.masked_fill(~kept, 0.0).sum(dim=-1)
    return -inside / (sparse_ratio * num_classes)


def sparse_kd_weight(alpha: float, tau: float, sparse_ratio: float, num_classes: int) -> float:
    """Eq. 5: the weight ``alpha tau^2 / (r K)`` that pulls the student equally towards every class in ``M``."""
    return alpha * tau**2 / (sparse_ratio * num_classes)
