"""The KD loss (Eq. 1) and the nasty loss (Eq. 2) against direct formulas, masked teachers included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from defense import make_policy
from training.losses import kd_loss, kd_loss_terms, nasty_loss, nasty_loss_terms


def _direct_kd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, tau: float, alpha: float) -> torch.Tensor:
    """Eq. 1 written out: alpha tau^2 mean_b sum_k p_T (log p_T - log p_S) + (1 - alpha) CE, in float64."""
    p_t = torch.softmax(teacher.double() / tau, dim=-1)
    log_p_s = torch.log_softmax(student.double() / tau, dim=-1)
    kl = torch.stack([
        sum(p_t[b, k] * (torch.log(p_t[b, k]) - log_p_s[b, k]) for k in range(teacher.shape[1]) if p_t[b, k] > 0)
        for b in range(teacher.shape[0])
    ]).mean()
    return alpha * tau**2 * kl + (1 - alpha) * F.cross_entropy(student.double(), labels)


def test_kd_terms_are_the_two_weighted_parts_of_eq_1() -> None:
    """``kd`` is Eq. 1 at alpha = 1 scaled by alpha, ``ce`` the label cross-entropy scaled by 1 - alpha."""
    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(6, 10, generator=gen), make_policy("stingy", k=2)(torch.randn(6, 10, generator=gen) * 3)
    labels = torch.randint(0, 10, (6,), generator=gen)
    terms = kd_loss_terms(student, teacher, labels, tau=20.0, alpha=0.9)
    assert set(terms) == {"kd", "ce"}
    torch.testing.assert_close(terms["kd"].double(), 0.9 * _direct_kd(student, teacher, labels, 20.0, 1.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["ce"].double(), 0.1 * F.cross_entropy(student.double(), labels), rtol=1e-5, atol=1e-6)
    nasty = nasty_loss_terms(student, torch.randn(6, 10, generator=gen), labels, tau=4.0, omega=0.04)
    assert set(nasty) == {"ce", "adversarial"} and nasty["adversarial"] <= 0
    torch.testing.assert_close(nasty["ce"], F.cross_entropy(student, labels))


@pytest.mark.parametrize("tau", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("policy", ["normal", "stingy", "least", "label_only"])
def test_kd_loss_matches_the_direct_formula(tau: float, policy: str) -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 10, generator=gen)
    teacher = make_policy(policy, k=2)(torch.randn(6, 10, generator=gen) * 3) if policy in ("stingy", "least") else make_policy(policy)(torch.randn(6, 10, generator=gen) * 3)
    labels = torch.randint(0, 10, (6,), generator=gen)
    expected = _direct_kd(student, teacher, labels, tau, 0.9)
    torch.testing.assert_close(kd_loss(student, teacher, labels, tau, 0.9).double(), expected, rtol=1e-5, atol=1e-5)


def test_masked_classes_add_nothing_and_gradients_stay_finite() -> None:
    gen = torch.Generator().manual_seed(1)
    teacher = make_policy("stingy", k=2)(torch.randn(8, 100, generator=gen) * 5)
    labels = torch.randint(0, 100, (8,), generator=gen)
    student = torch.randn(8, 100, generator=gen, requires_grad=True)
    loss = kd_loss(student, teacher, labels, tau=20.0, alpha=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    # Changing the student on masked classes only moves log p_S there through the normaliser, so the KL
    # equals -sum_{k in M} p_T(k) log p_S(k) + const: check the loss is that cross-entropy minus the entropy.
    p_t = torch.softmax(teacher / 20.0, dim=-1)
    kept = torch.isfinite(teacher)
    log_p_s = torch.log_softmax(student.detach() / 20.0, dim=-1)
    cross = -(p_t * log_p_s.masked_fill(~kept, 0.0)).sum(-1)
    entropy = -(p_t * torch.log(p_t).masked_fill(~kept, 0.0)).sum(-1)
    torch.testing.assert_close(loss.detach(), (400.0 * (cross - entropy)).mean(), rtol=1e-5, atol=1e-4)


def test_kd_loss_is_finite_for_huge_teacher_logits_and_low_temperature() -> None:
    teacher = make_policy("stingy", k=3)(torch.tensor([[1e30, -1e30, 5.0, 0.0, 2.0]]))
    student = torch.zeros(1, 5, requires_grad=True)
    loss = kd_loss(student, teacher, torch.tensor([0]), tau=0.01, alpha=0.9)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_identical_student_has_zero_kl() -> None:
    logits = torch.randn(4, 10)
    labels = logits.argmax(-1)
    assert kd_loss(logits, logits, labels, tau=4.0, alpha=1.0).abs() < 1e-5


def test_nasty_loss_matches_the_direct_formula() -> None:
    gen = torch.Generator().manual_seed(2)
    model, adversary = torch.randn(5, 10, generator=gen), torch.randn(5, 10, generator=gen)
    labels = torch.randint(0, 10, (5,), generator=gen)
    tau, omega = 4.0, 0.04
    p = torch.softmax(model / tau, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(adversary / tau, -1))).sum(-1).mean()
    expected = F.cross_entropy(model, labels) - omega * tau**2 * kl
    torch.testing.assert_close(nasty_loss(model, adversary, labels, tau, omega), expected)


def test_nasty_loss_is_ma_et_al_released_code_and_descends_away_from_the_adversary() -> None:
    """train_nasty.py of VITA-Group/Nasty-Teacher: ``adv = KLDivLoss(batchmean)(log_softmax(adversary / T),
    softmax(model / T)) * T^2`` and ``loss = CE - weight * adv``; gradient descent on it raises that KL."""
    gen = torch.Generator().manual_seed(3)
    model, adversary = torch.randn(5, 10, generator=gen, requires_grad=True), torch.randn(5, 10, generator=gen)
    labels = torch.randint(0, 10, (5,), generator=gen)
    tau, omega = 4.0, 0.04

    def released(logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(adversary / tau, -1), F.softmax(logits / tau, -1), reduction="batchmean") * tau**2

    terms = nasty_loss_terms(model, adversary, labels, tau, omega)
    torch.testing.assert_close(terms["adversarial"], -omega * released(model))
    terms["adversarial"].backward()
    with torch.no_grad():
        assert released(model - 1.0 * model.grad) > released(model)
