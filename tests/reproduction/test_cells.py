"""The spread rule (training.reproduction.cells): when two cells' means differ by less than their seeds' spread."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from training.reproduction.cells import Cell, spread, within_spread

accuracy = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
runs = st.lists(accuracy, min_size=2, max_size=5)


def cell(*values: float, diverged: int = 0) -> Cell:
    rows = [{"test_accuracy": v, "diverged": False, "seed": i} for i, v in enumerate(values)]
    rows += [{"test_accuracy": None, "diverged": True, "diverged_step": 7, "seed": len(values) + i} for i in range(diverged)]
    return Cell(tuple(rows))


def test_mean_std_and_diverged_runs() -> None:
    c = cell(80.0, 84.0, diverged=1)
    assert (c.n, c.mean, c.accuracies, len(c.diverged)) == (3, 82.0, [80.0, 84.0], 1)
    assert math.isclose(c.std, math.sqrt(8.0))  # sample std, ddof = 1
    assert cell(80.0).std is None and cell(diverged=2).mean is None and not Cell()
    assert c.seed(1)["test_accuracy"] == 84.0 and c.seed(9) is None


def test_one_run_each_has_no_spread() -> None:
    assert spread(cell(80.0), cell(80.1)) is None and not within_spread(cell(80.0), cell(80.0))


@given(runs, runs)
def test_the_rule_is_symmetric_and_is_the_combined_std(a: list[float], b: list[float]) -> None:
    x, y = cell(*a), cell(*b)
    assert spread(x, y) == spread(y, x) == math.hypot(x.std, y.std)
    assert within_spread(x, y) == within_spread(y, x) == (abs(x.mean - y.mean) <= spread(x, y))


@given(runs, runs, st.floats(min_value=-50.0, max_value=50.0))
def test_shifting_one_cell_past_the_spread_tells_them_apart(a: list[float], b: list[float], shift: float) -> None:
    x, y = cell(*a), cell(*b)
    width = spread(x, y)
    moved = cell(*(v + (y.mean - x.mean) + shift for v in a))  # same spread, means exactly `shift` apart
    assert math.isclose(moved.std, x.std, rel_tol=1e-9, abs_tol=1e-9)
    if abs(shift) > width * 1.001 + 1e-9:
        assert not within_spread(moved, y)
    if abs(shift) < width * 0.999 - 1e-9:
        assert within_spread(moved, y)


def test_a_cell_is_within_its_own_spread() -> None:
    assert within_spread(cell(80.0, 82.0), cell(80.0, 82.0)) and within_spread(cell(10.0, 10.0), cell(10.0, 10.0))
