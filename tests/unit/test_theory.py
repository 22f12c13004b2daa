"""The paper's approximations (Eq. 3-5, A3-A8) against exact values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from defense import make_policy, tempered_log_softmax, tempered_softmax
from defense.theory import (
    approximate_discarded_mass,
    approximate_residual,
    approximate_sparse_cross_entropy,
    discarded_mass,
    preserved_mass,
    renormalisation_residual,
    sparse_cross_entropy,
    sparse_kd_weight,
    uniform_approximation,
)
from training.losses import kd_loss


def _teacher(num_classes: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(64, num_classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


@pytest.mark.parametrize(("num_classes", "ratio"), [(10, 0.2), (100, 0.1), (200, 0.1), (100, 0.3)])
def test_residual_approximation_holds_at_large_temperature(num_classes: int, ratio: float) -> None:
    logits = _teacher(num_classes)
    stingy = make_policy("stingy", sparse_ratio=ratio)
    kept = torch.isfinite(stingy(logits))
    probs = tempered_softmax(logits, tau=1000.0)
    exact = renormalisation_residual(probs, kept)[kept]
    approx = approximate_residual(ratio, num_classes)
    torch.testing.assert_close(exact, torch.full_like(exact, approx), rtol=0.02, atol=0.0)
    torch.testing.assert_close(
        discarded_mass(probs, kept), torch.full((64,), approximate_discarded_mass(ratio, num_classes), dtype=torch.float64), rtol=0.02, atol=0.0
    )


def test_residual_approximation_fails_at_low_temperature() -> None:
    """The uniform assumption of Eq. 3 needs a large tau: at tau = 1 the approximation is far off."""
    logits = _teacher(100)
    kept = torch.isfinite(make_policy("stingy", sparse_ratio=0.1)(logits))
    exact = renormalisation_residual(tempered_softmax(logits, tau=1.0), kept)[kept]
    relative_error = (exact - approximate_residual(0.1, 100)).abs() / approximate_residual(0.1, 100)
    assert relative_error.max() > 0.5


@pytest.mark.parametrize("tau", [1.0, 4.0, 20.0])
def test_renormalised_target_is_the_softmax_of_stingy_logits(tau: float) -> None:
    """Eq. A2/A5 and Eq. 6 describe the same distribution: p + delta on M equals softmax(z_ST / tau)."""
    logits = _teacher(100)
    released = make_policy("stingy", sparse_ratio=0.1)(logits)
    kept = torch.isfinite(released)
    probs = tempered_softmax(logits, tau)
    target = (probs + renormalisation_residual(probs, kept)).masked_fill(~kept, 0.0)
    torch.testing.assert_close(target, tempered_softmax(released, tau))
    torch.testing.assert_close(discarded_mass(probs, kept) + preserved_mass(probs, kept), torch.ones(64, dtype=torch.float64))


def test_eq4_approximation_at_large_temperature() -> None:
    logits, student = _teacher(100, seed=1), _teacher(100, seed=2)
    released = make_policy("stingy", sparse_ratio=0.1)(logits)
    kept = torch.isfinite(released)
    tau = 1000.0
    target = tempered_softmax(released, tau)
    student_log_probs = tempered_log_softmax(student, tau)
    exact = sparse_cross_entropy(target, student_log_probs)
    approx = approximate_sparse_cross_entropy(student_log_probs, kept, 0.1)
    torch.testing.assert_close(exact, approx, rtol=1e-3, atol=0.0)


def test_uniform_approximation_sums_to_one() -> None:
    probs = uniform_approximation(10, top1=3, epsilon=0.01)
    assert probs.argmax().item() == 3
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError):
        uniform_approximation(10, top1=0, epsilon=0.2)


@pytest.mark.parametrize(("num_classes", "ratio", "alpha"), [(100, 0.1, 0.9), (100, 0.05, 0.9), (10, 0.2, 0.5), (200, 0.1, 0.9)])
def test_eq5_weight_is_the_slope_of_the_kd_loss(num_classes: int, ratio: float, alpha: float) -> None:
    """Eq. 5 against the KD loss itself (Eq. 1, ``training.losses.kd_loss``): with a stingy teacher at a large
    tau, the distillation term is ``w * sum_{k in M} -log p_tau^S(k)`` plus a constant. The slope ``w`` is
    measured as the change of the loss between two students over the change of that sum."""
    tau = 1e4  # the teacher's soft probabilities on M then differ from 1 / N by about 3 / tau (logits of scale 3)
    released = make_policy("stingy", sparse_ratio=ratio)(_teacher(num_classes))
    kept = torch.isfinite(released)
    labels = torch.zeros(64, dtype=torch.long)

    def distillation_term(student: torch.Tensor) -> torch.Tensor:
        return kd_loss(student, released, labels, tau, alpha) - (1.0 - alpha) * F.cross_entropy(student, labels)

    def kept_sum(student: torch.Tensor) -> torch.Tensor:
        return -tempered_log_softmax(student, tau).masked_fill(~kept, 0.0).sum(dim=-1).mean()

    first, second = _teacher(num_classes, seed=1) * tau, _teacher(num_classes, seed=2) * tau
    slope = (distillation_term(first) - distillation_term(second)) / (kept_sum(first) - kept_sum(second))
    assert float(slope) == pytest.approx(sparse_kd_weight(alpha, tau, ratio, num_classes), rel=1e-3)
