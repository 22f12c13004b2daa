"""The training losses of the paper: cross-entropy, knowledge distillation (Eq. 1) and the Nasty
Teacher's self-undermining loss (Eq. 2). All are batch means and safe for masked (``-inf``) targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from defense import tempered_log_softmax

# The paper's KD setting (Sec. 4.1): temperature tau 20 and weight alpha 0.9 of the KL term in Eq. 1. Every KD
# default of the project (stingy-train kd, the benchmark presets, the attacker's strategies) comes from here.
KD_TEMPERATURE = 20.0
KD_ALPHA = 0.9


def soft_cross_entropy_kl(target_logits: Tensor, student_logits: Tensor, tau: float) -> Tensor:
    """``KL(p_tau^T || p_tau^S)`` per row, where ``p_tau = softmax(z / tau)``.

    Classes the target gives zero probability (masked ``-inf`` logits) add exactly nothing (``0 log 0 = 0``),
    so the value and the gradient stay finite for any released logits with at least one finite entry.
    """
    log_target = tempered_log_softmax(target_logits.detach(), tau)
    target = log_target.exp()
    log_target = torch.where(target > 0, log_target, torch.zeros_like(log_target))
    log_student = tempered_log_softmax(student_logits, tau)
    return (target * (log_target - log_student)).sum(dim=-1)


def kd_loss_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, tau: float, alpha: float) -> dict[str, Tensor]:
    """Eq. 1's two weighted terms, batch means: ``kd = alpha tau^2 KL(p_tau^T, p_tau^S)`` and
    ``ce = (1 - alpha) H(p^S, y)``; the loss is their sum."""
    kl = soft_cross_entropy_kl(teacher_logits, student_logits, tau).mean()
    ce = F.cross_entropy(student_logits.float(), labels)
    return {"kd": alpha * tau**2 * kl, "ce": (1.0 - alpha) * ce}


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, tau: float, alpha: float) -> Tensor:
    """Eq. 1: ``alpha tau^2 KL(p_tau^T, p_tau^S) + (1 - alpha) H(p^S, y)``, averaged over the batch."""
    terms = kd_loss_terms(student_logits, teacher_logits, labels, tau, alpha)
    return terms["kd"] + terms["ce"]


def nasty_loss_terms(model_logits: Tensor, adversary_logits: Tensor, labels: Tensor, tau: float, omega: float) -> dict[str, Tensor]:
    """Eq. 2's two weighted terms, batch means: ``ce = H(p^NT, y)`` and ``adversarial = -omega tau^2 KL(p_tau^NT || p_tau^A)``;
    the loss is their sum.

    The KL is taken in the direction of Ma et al.'s released code (the nasty model's distribution as the
    target of the fixed adversary), and the gradient flows through the nasty model's distribution.
    """
    log_model = tempered_log_softmax(model_logits, tau)
    log_adversary = tempered_log_softmax(adversary_logits.detach(), tau)
    kl = (log_model.exp() * (log_model - log_adversary)).sum(dim=-1).mean()
    return {"ce": F.cross_entropy(model_logits.float(), labels), "adversarial": -omega * tau**2 * kl}


def nasty_loss(model_logits: Tensor, adversary_logits: Tensor, labels: Tensor, tau: float, omega: float) -> Tensor:
    """Eq. 2: ``H(p^NT, y) - omega tau^2 KL(p_tau^NT || p_tau^A)``, averaged over the batch."""
    terms = nasty_loss_terms(model_logits, adversary_logits, labels, tau, omega)
    return terms["ce"] + terms["adversarial"]
