"""Numerically safe tempered softmax over released logits.

Released logits may hold ``-inf`` (masked classes), huge values and low-precision dtypes. The
distribution a student distils from is ``p_tau(k) = softmax(z / tau)_k`` (paper Sec. 3.1). Computing
it as ``softmax(z / tau)`` overflows for large ``|z| / tau``; here the row maximum is subtracted first,
``p_tau(k) = exp((z_k - max z) / tau) / sum_j exp((z_j - max z) / tau)``, in float32 or wider, so the
top entry is always ``exp(0) = 1`` before normalising, masked entries are exactly 0, and no entry is
NaN as long as every row holds at least one finite logit and no ``+inf``/NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tempered_log_softmax(logits: Tensor, tau: float = 1.0) -> Tensor:
    """``log softmax(logits / tau)`` over the last dim, in float32 (float64 stays float64).

    Masked (``-inf``) entries give ``-inf``; every finite entry gives a finite value.
    """
    if tau <= 0:
        raise ValueError(f"temperature must be positive, got {tau}")
    z = logits.to(_compute_dtype(logits.dtype))
    shifted = (z - z.amax(dim=-1, keepdim=True)) / tau
    return shifted - torch.logsumexp(shifted, dim=-1, keepdim=True)


def tempered_softmax(logits: Tensor, tau: float = 1.0) -> Tensor:
    """``softmax(logits / tau)`` over the last dim, in float32 (float64 stays float64); sums to 1."""
    return tempered_log_softmax(logits, tau).exp()
