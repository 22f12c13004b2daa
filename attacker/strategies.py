"""Distillation strategies: how an attacker turns the stored responses into a ``training`` objective.

Every strategy receives the server's released logits in dense form ``[M, K]`` (the stored pairs in
place, ``-inf`` for every class the server did not release) for the ``M`` transfer images, in transfer
set order, and returns an :class:`~training.objectives.Objective` for the student. Strategies are
frozen dataclasses whose fields are their parameters; ``make_strategy("low_temperature:tau=2")``
builds one by name, and :meth:`Strategy.spec` gives that string back.

- ``naive``: the paper's attacker. KD (Eq. 1) on the rebuilt ``-inf`` logits, tau 20, alpha 0.9.
- ``hard_label``: cross-entropy on the released top-1 class only (what a label-only API gives).
- ``low_temperature``: KD at tau 4. The paper's collapse needs a large tau (Eq. 5): at a low one the
  target keeps the gap between the top-1 and the other kept classes instead of spreading the mass
  evenly over them.
- ``smooth_fill``: every masked class filled ``margin`` below the smallest released logit of its image,
  then KD at tau 20: the target is smooth again (like the paper's "stingy - smooth", Sec. 4.2) and
  keeps the released order.

The adaptive strategies clip the gradient norm at 5 (``grad_clip``) so that they do not diverge; any
strategy takes ``grad_clip=V`` (``none`` turns it off), e.g. ``naive:grad_clip=5`` is the paper's attacker
kept stable the same way.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from training.console import parse_spec
from training.losses import KD_ALPHA, KD_TEMPERATURE
from training.objectives import CachedTeacher, Distillation, HardLabelDistillation, Objective


@dataclass(frozen=True)
class Strategy(ABC):
    """How a student learns from released logits; ``grad_clip`` bounds its gradient norm (None: off)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")

    def targets(self, released: Tensor) -> Tensor:
        """The teacher logits ``[M, K]`` the objective distils from (the released ones, by default)."""
        return released

    @abstractmethod
    def objective(self, released: Tensor) -> Objective:
        """The student's objective for released logits ``[M, K]`` indexed by transfer-set position."""

    def spec(self) -> str:
        """``name`` plus every parameter that differs from its default: ``low_temperature:tau=2``."""
        changed = [
            f"{f.name}={_format(getattr(self, f.name))}" for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return self.name + (":" + ",".join(changed) if changed else "")

    def parameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Naive(Strategy):
    name = "naive"
    summary = f"the paper's attacker: KD (Eq. 1) on the rebuilt -inf logits, tau {KD_TEMPERATURE:g}, alpha {KD_ALPHA:g}"
    tau: float = KD_TEMPERATURE
    alpha: float = KD_ALPHA

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau <= 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"need tau > 0 and alpha in [0, 1], got tau={self.tau}, alpha={self.alpha}")

    def objective(self, released: Tensor) -> Objective:
        return Distillation(CachedTeacher(self.targets(released)), tau=self.tau, alpha=self.alpha)


@dataclass(frozen=True)
class HardLabel(Strategy):
    name = "hard_label"
    summary = "cross-entropy on the released top-1 class only"

    def objective(self, released: Tensor) -> Objective:
        return HardLabelDistillation(CachedTeacher(released))


@dataclass(frozen=True)
class LowTemperature(Naive):
    name = "low_temperature"
    summary = "KD at a low temperature (tau 4), gradient norm clipped at 5"
    grad_clip: float | None = 5.0
    tau: float = 4.0


@dataclass(frozen=True)
class SmoothFill(Naive):
    name = "smooth_fill"
    summary = "masked classes filled `margin` below the smallest released logit, then KD at tau 20, gradient norm clipped at 5"
    grad_clip: float | None = 5.0
    margin: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.margin <= 0:
            raise ValueError(f"margin must be positive, got {self.margin}")

    def targets(self, released: Tensor) -> Tensor:
        """Masked entries set to ``min(released logits of the row) - margin``: finite everywhere, same argmax."""
        finite = torch.isfinite(released)
        smallest = released.masked_fill(~finite, float("inf")).amin(dim=-1, keepdim=True)
        return torch.where(finite, released, smallest - self.margin)


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (Naive, HardLabel, LowTemperature, SmoothFill)}
# What `stingy-attack run` tries unless told otherwise: every strategy, and the paper's attacker once more with
# its gradient norm clipped (the unclipped one can diverge on the sparse targets; this one shows what it learns).
DEFAULT_STRATEGIES = ("naive", "naive:grad_clip=5", "hard_label", "low_temperature", "smooth_fill")


def make_strategy(spec: str) -> Strategy:
    """Build a strategy from ``name`` or ``name:param=value,...``; ``ValueError`` names what is accepted."""
    name = spec.strip().partition(":")[0]
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known strategies: {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    accepted = ", ".join(sorted(fields))
    try:
        _, values = parse_spec(spec, "strategy")
    except ValueError as error:
        raise ValueError(f"{error}; it takes parameters {accepted}") from None
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"strategy {name!r} takes parameters {accepted} as KEY=VALUE, got {', '.join(unknown)}")
    for key, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"strategy parameter {key} needs a number or 'none', got {value!r}")
    return cls(**{key: None if value is None else float(value) for key, value in values.items()})


def _format(value: Any) -> str:
    return "none" if value is None else f"{value:g}"
