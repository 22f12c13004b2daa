"""The strategies build the targets and objectives they claim to."""

from __future__ import annotations

import pytest
import torch

from attacker.strategies import DEFAULT_STRATEGIES, HardLabel, LowTemperature, Naive, SmoothFill, make_strategy
from defense import make_policy, tempered_softmax
from training.objectives import Distillation, HardLabelDistillation

TEACHER = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)) * 4
STINGY = make_policy("stingy", k=2)(TEACHER)  # what the attacker rebuilds from stored pairs


def test_naive_is_the_papers_attacker_on_exactly_n_released_classes() -> None:
    strategy = make_strategy("naive")
    assert isinstance(strategy, Naive) and (strategy.tau, strategy.alpha) == (20.0, 0.9)
    targets = strategy.targets(STINGY)
    assert torch.equal(targets, STINGY) and torch.isfinite(targets).sum(dim=1).eq(2).all()
    objective = strategy.objective(STINGY)
    assert isinstance(objective, Distillation) and (objective.tau, objective.alpha) == (20.0, 0.9)
    assert objective.describe()["teacher"] == "cached"


def test_hard_label_learns_the_released_top1_only() -> None:
    objective = make_strategy("hard_label").objective(STINGY)
    assert isinstance(objective, HardLabelDistillation)
    assert isinstance(make_strategy("hard_label"), HardLabel)


def test_low_temperature_is_kd_at_tau_4_with_clipping() -> None:
    strategy = make_strategy("low_temperature")
    assert isinstance(strategy, LowTemperature) and strategy.tau == 4.0 and strategy.grad_clip == 5.0
    objective = strategy.objective(STINGY)
    assert isinstance(objective, Distillation) and objective.tau == 4.0


def test_smooth_fill_target_is_finite_keeps_the_released_values_and_the_argmax() -> None:
    strategy = make_strategy("smooth_fill:margin=0.5")
    assert isinstance(strategy, SmoothFill) and strategy.margin == 0.5 and strategy.grad_clip == 5.0
    targets = strategy.targets(STINGY)
    assert torch.isfinite(targets).all()
    kept = torch.isfinite(STINGY)
    assert torch.equal(targets[kept], STINGY[kept])
    assert torch.equal(targets.argmax(dim=1), TEACHER.argmax(dim=1))
    smallest_kept = STINGY.masked_fill(~kept, float("inf")).amin(dim=1, keepdim=True)
    assert torch.allclose(targets[~kept], (smallest_kept - 0.5).expand_as(targets)[~kept])
    assert (tempered_softmax(targets, 20.0) > 0).all()  # smooth: every class has mass again
    assert (tempered_softmax(STINGY, 20.0) > 0).sum(dim=1).eq(2).all()
    # a dense (normal) answer is left as it is
    assert torch.equal(strategy.targets(TEACHER), TEACHER)


def test_specs_round_trip_and_mistakes_are_named() -> None:
    assert [make_strategy(name).spec() for name in DEFAULT_STRATEGIES] == list(DEFAULT_STRATEGIES)
    strategy = make_strategy("low_temperature:tau=2, alpha=0.5")
    assert (strategy.tau, strategy.alpha) == (2.0, 0.5)
    assert strategy.spec() == "low_temperature:tau=2,alpha=0.5"
    assert make_strategy(strategy.spec()) == strategy
    assert make_strategy("naive:grad_clip=none").grad_clip is None
    assert make_strategy("naive:grad_clip=3").spec() == "naive:grad_clip=3"
    for bad, message in (("nope", "unknown strategy"), ("naive:beta=1", "takes parameters"), ("naive:tau", "takes parameters"),
                         ("naive:tau=hot", "needs a number"), ("naive:tau=0", "tau > 0"), ("smooth_fill:margin=-1", "margin"),
                         ("hard_label:grad_clip=0", "grad_clip")):
        with pytest.raises(ValueError, match=message):
            make_strategy(bad)
